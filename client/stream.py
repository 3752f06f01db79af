"""The `stream` command: capture thread -> sender task | receiver task -> render task / JSON lines.

Sending never waits for a reply (up to `max_inflight` frames are pipelined) and the frame
index the server echoes is matched to its send time for the round-trip latency. When the
server goes away mid-session the session reconnects with backoff while capture and display
keep going; a server that never answered (wrong --server, not started) or a refused key ends
it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from client.capture import CaptureThread
from client.display import Viewer
from client.errors import CaptureError, ServerUnavailable
from client.layout import HudStats
from client.transport import Backoff, StreamConnection
from shared.protocol import ErrorBody, StreamControl, StreamResult


@dataclass
class StreamOptions:
    server: str
    api_key: str | None = None
    smoothing: float | None = None
    emoji: bool = False
    duration: float | None = None
    retry_for: float | None = None  # give up after this long without a connection; None = never
    max_inflight: int = 2
    drain_timeout: float = 5.0  # at the end of a file: how long to wait for the last replies


@dataclass
class Stats:
    sent: int = 0
    replies: int = 0
    dropped: int = 0  # server-reported, cumulative
    connections: int = 0
    latency_ms: float | None = None
    _latency_sum: float = 0.0
    _reply_times: deque[float] = field(default_factory=lambda: deque(maxlen=60))

    def on_reply(self, now: float, latency_ms: float | None, dropped: int) -> None:
        self.replies += 1
        self.dropped += dropped
        self._reply_times.append(now)
        if latency_ms is not None:
            self.latency_ms = latency_ms
            self._latency_sum += latency_ms

    def fps(self, now: float) -> float:
        recent = [t for t in self._reply_times if now - t < 2.0]
        if len(recent) < 2 or now - recent[0] <= 0:
            return 0.0
        return (len(recent) - 1) / (recent[-1] - recent[0]) if recent[-1] > recent[0] else 0.0

    def summary(self, skipped: int) -> str:
        mean = f"{self._latency_sum / self.replies:.0f} ms" if self.replies else "-"
        return (
            f"sent {self.sent} frames, {self.replies} replies, mean rtt {mean}, "
            f"dropped {self.dropped} by the server + {skipped} never sent (busy or disconnected), "
            f"connections {self.connections}"
        )


def log(msg: str) -> None:
    print(f"emotion-client: {msg}", file=sys.stderr, flush=True)


class StreamSession:
    def __init__(
        self,
        opts: StreamOptions,
        capture: CaptureThread,
        viewer: Viewer | None = None,
        jsonl: IO[str] | None = None,
        record: Path | None = None,
    ) -> None:
        self.opts, self.capture, self.slot = opts, capture, capture.slot
        self.viewer, self.jsonl, self.record_path = viewer, jsonl, record
        self.stats = Stats()
        self.stop = asyncio.Event()
        self.status, self.status_error = "connecting", False
        self.last: StreamResult | None = None
        self._progress = asyncio.Event()
        self._answered = -1  # highest frame index replied to on the current connection
        self._sending_done = False

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Until the source ends, the user quits, or --duration passes; raises AuthError/CaptureError."""
        loop = asyncio.get_running_loop()
        self.slot.bind(loop)
        self._install_signals(loop)
        self.capture.start()
        tasks = [asyncio.create_task(self._connect_loop(), name="connect")]
        if self.viewer is not None or self.record_path is not None:
            tasks.append(asyncio.create_task(self._render_loop(), name="render"))
        if self.opts.duration is not None:
            tasks.append(asyncio.create_task(self._timer(self.opts.duration), name="timer"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raise AuthError etc.
        finally:
            self.stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.capture.stop()
            self.capture.join(timeout=2)
        if self.slot.error is not None and not isinstance(self.slot.error, SystemExit):
            raise CaptureError(f"capture failed: {self.slot.error}") from self.slot.error

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        def first(sig: signal.Signals) -> None:
            log("stopping (press Ctrl-C again to force)")
            self.stop.set()
            loop.remove_signal_handler(sig)  # a second Ctrl-C gets Python's default KeyboardInterrupt

        for sig in (signal.SIGINT, signal.SIGTERM):
            # not available off the main thread or on Windows; Ctrl-C then raises KeyboardInterrupt
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, first, sig)

    async def _timer(self, seconds: float) -> None:
        await self._sleep(seconds)
        self.stop.set()

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped first; True if stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)
        return self.stop.is_set()

    # -- connection --------------------------------------------------------------------------------

    async def _connect_loop(self) -> None:
        """Connect and serve until done; on failure back off. Only a connection that got replies
        resets the backoff, so a server that accepts and closes at once (1013 while loading) is not
        hammered."""
        backoff = Backoff()
        down_since: float | None = None
        while not self.stop.is_set():
            replies_before = self.stats.replies
            try:
                conn = await StreamConnection.open(self.opts.server, self.opts.api_key)
            except ServerUnavailable as exc:
                problem = exc
            else:
                self.stats.connections += 1
                if self.stats.connections > 1:
                    log(f"reconnected to {self.opts.server}")
                self._set_status("live")
                try:
                    await self._serve(conn)
                    return
                except ServerUnavailable as exc:
                    problem = exc
                finally:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
            if self.stats.replies > replies_before:
                backoff.reset()
                down_since = None
            now = time.monotonic()
            down_since = down_since or now
            if self.stats.connections == 0 and self.opts.retry_for is None:
                # Never reached: most likely a wrong --server or a server not started; a loop of
                # retries would only hide that. --retry-for waits for a server that is coming up.
                raise ServerUnavailable(
                    f"{problem}; is the server running and --server right? "
                    "(--retry-for SECONDS waits for a server that is still starting)"
                ) from problem
            if self.opts.retry_for is not None and now - down_since > self.opts.retry_for:
                raise problem
            delay = backoff.next_delay()
            self._set_status(f"server unavailable, reconnecting in {delay:.1f} s", error=True)
            log(f"{problem}; reconnecting in {delay:.1f} s")
            if await self._sleep(delay):
                return

    async def _serve(self, conn: StreamConnection) -> None:
        """Run one connection until the source ends or stop is requested; raises when it breaks."""
        if self.opts.smoothing is not None:
            await conn.send_control(StreamControl(smoothing=self.opts.smoothing))
        self._answered = -1
        self._sending_done = False
        sent_at: dict[int, float] = {}
        sender = asyncio.create_task(self._send_loop(conn, sent_at), name="send")
        receiver = asyncio.create_task(self._recv_loop(conn, sent_at), name="recv")
        stopper = asyncio.create_task(self.stop.wait(), name="stop")
        try:
            done, _ = await asyncio.wait({sender, receiver, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if receiver in done:
                receiver.result()  # raises why the connection ended; returns once all is answered
                return
            if sender in done:
                sender.result()
                if not self.stop.is_set():  # source exhausted: collect the last replies
                    await asyncio.wait(
                        {receiver, stopper},
                        timeout=self._drain_time(conn),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if receiver.done():
                        receiver.result()
        finally:
            for task in (sender, receiver, stopper):
                task.cancel()
            await asyncio.gather(sender, receiver, stopper, return_exceptions=True)

    def _drain_time(self, conn: StreamConnection) -> float:
        return 0.0 if self._answered >= conn.sent - 1 else self.opts.drain_timeout

    async def _send_loop(self, conn: StreamConnection, sent_at: dict[int, float]) -> None:
        while True:
            while conn.sent - (self._answered + 1) >= self.opts.max_inflight:
                self._progress.clear()
                # A reply that never comes (frame rejected) must not stall us forever. Not wait_for:
                # on Python 3.11 it swallows a cancel that lands as the reply arrives, and this task
                # would then outlive its connection.
                waiter = asyncio.ensure_future(self._progress.wait())
                try:
                    await asyncio.wait({waiter}, timeout=1.0)
                finally:
                    waiter.cancel()
                if not self._progress.is_set():
                    break
            frame = await self.slot.take()
            if frame is None:
                self._sending_done = True
                return
            sent_at[conn.sent] = time.monotonic()
            await conn.send_frame(frame.jpeg)
            self.stats.sent += 1

    async def _recv_loop(self, conn: StreamConnection, sent_at: dict[int, float]) -> None:
        async for msg in conn.results():
            if isinstance(msg, ErrorBody):
                log(f"server error {msg.error.code}: {msg.error.message}")
                continue
            now = time.monotonic()
            t_sent = sent_at.pop(msg.frame, None)
            for k in [k for k in sent_at if k < msg.frame]:  # frames the server skipped
                del sent_at[k]
            latency = (now - t_sent) * 1000 if t_sent is not None else None
            self._answered = max(self._answered, msg.frame)
            self._progress.set()
            self.stats.on_reply(now, latency, msg.dropped)
            self.last = msg
            self._write(msg, latency)
            if self._sending_done and self._answered >= conn.sent - 1:
                return  # the source has ended and every frame is answered

    def _write(self, msg: StreamResult, latency: float | None) -> None:
        if self.jsonl is None:
            return
        rec = {
            "ts": round(time.time(), 3),
            "conn": self.stats.connections,
            "frame": msg.frame,
            "latency_ms": None if latency is None else round(latency, 1),
            "dropped": msg.dropped,
            "faces": [f.model_dump(mode="json") for f in msg.faces],
            "image": msg.image.model_dump(mode="json"),
            "timing_ms": msg.timing_ms.model_dump(mode="json"),
        }
        self.jsonl.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self.jsonl.flush()  # a reader that left (`| head`) raises BrokenPipeError: main() exits quietly

    def _set_status(self, text: str, error: bool = False) -> None:
        self.status, self.status_error = text, error

    # -- rendering ---------------------------------------------------------------------------------

    def hud(self) -> HudStats:
        return HudStats(
            fps=self.stats.fps(time.monotonic()),
            latency_ms=self.stats.latency_ms,
            dropped=self.stats.dropped + self.slot.skipped,
            faces=len(self.last.faces) if self.last else 0,
            status="" if self.status == "live" else self.status,
            error=self.status_error,
        )

    async def _render_loop(self) -> None:
        """Draw the newest reply on the newest frame (~30 Hz); quit when the window says so."""
        writer: Any = None
        shown_seq = -1
        try:
            while not self.stop.is_set():
                frame = self.slot.latest
                if frame is not None and frame.seq != shown_seq and frame.image is not None:
                    shown_seq = frame.seq
                    faces = self.last.faces if self.last else []
                    hud = self.hud()
                    if self.record_path is not None:
                        from client.overlay import draw_result
                        from client.picture import to_bgr

                        img = draw_result(to_bgr(frame.image), faces, hud, emoji=self.opts.emoji)
                        writer = writer or self._open_writer(img.shape[1], img.shape[0])
                        writer.write(img)
                    if self.viewer is not None and not self.viewer.show(
                        frame.image, faces, hud, self.opts.emoji
                    ):
                        self.stop.set()
                        return
                elif self.viewer is not None and not self.viewer.poll():
                    self.stop.set()
                    return
                await asyncio.sleep(1 / 30)
        finally:
            if writer is not None:
                writer.release()
            if self.viewer is not None:
                self.viewer.close()

    def _open_writer(self, w: int, h: int) -> Any:
        """An OpenCV video writer (`--record` needs the camera extra; the CLI checks before starting)."""
        import cv2

        assert self.record_path is not None
        fps = 1.0 / self.capture.period if self.capture.period else 15.0
        fourcc = cv2.VideoWriter.fourcc(*("MJPG" if self.record_path.suffix.lower() == ".avi" else "mp4v"))
        writer = cv2.VideoWriter(str(self.record_path), fourcc, fps, (w, h))
        if not writer.isOpened():
            raise CaptureError(f"cannot write video {self.record_path}")
        return writer
