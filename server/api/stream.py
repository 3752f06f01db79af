"""``WS /v1/stream``: JPEG frames in, one JSON result per processed frame out.

Each connection has a reader task and a processing task joined by a one-slot
mailbox. The reader never waits for the model: a frame that arrives while another
is still pending replaces it (newest wins) and the replaced one is counted as
dropped, so a fast client gets fresh results instead of a growing backlog, and a
connection holds at most one pending frame in memory. The per-stream frame cap
(``EMOTION_STREAM_MAX_FPS``) bounds how often the processor takes a frame, not which
frames arrive: while it waits for the cap, newer frames still replace the pending one,
so the newest frame received is always the one answered next.

Limits on what one connection may hold: a text (control) message over
``MAX_CONTROL_BYTES`` is refused unparsed, error replies are at most
``MAX_ERROR_CHARS`` long, a stream that sends no frame for
``EMOTION_STREAM_IDLE_TIMEOUT_S`` is closed with 4408, a page from another origin is
refused (1008), and ``EMOTION_MAX_STREAMS_PER_CLIENT`` caps the slots one client (API key,
else address) may hold. Every close for an error takes its code from the error's row in
:data:`server.errors.ERRORS`, as the HTTP replies do. Protocol: docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
from fastapi import APIRouter, WebSocket
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from server.api.options import default_options, resolve_options
from server.api.replies import stream_result
from server.config import Settings
from server.deps import RuntimeDep, get_ready_runtime, key_is_valid, presented_key
from server.errors import (
    INTERNAL,
    ApiError,
    Forbidden,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    UnsupportedMediaType,
    client_message,
    error_body,
    spec_for,
)
from server.metrics import Metrics
from server.pipeline.batcher import BatcherFull
from server.pipeline.decode import DecodeError
from server.pipeline.roi import RegionPlanner
from server.pipeline.runner import Job
from server.pipeline.track import Tracker
from server.runtime import Runtime
from shared.protocol import StreamControl

log = logging.getLogger(__name__)
router = APIRouter(tags=["stream"])

JPEG_MAGIC = b"\xff\xd8\xff"
MAX_REASON_BYTES = 123  # RFC 6455: a close reason fits in a 125-byte control frame
#: A StreamControl is under 200 bytes; anything far larger is refused without parsing it.
MAX_CONTROL_BYTES = 4096
#: How long a stream's latest frame waits before trying a full model queue again.
OVERLOAD_RETRY_S = 0.02
#: Error replies name the first few problems, not all of them (a reply must not outgrow its cause).
MAX_ERROR_CHARS = 300


class StreamClosed(Exception):
    """Ends a session with close ``code`` and ``reason``; errors raised in a session become one
    by their row in :data:`server.errors.ERRORS` (:meth:`for_error`)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason

    @classmethod
    def for_error(cls, exc: BaseException, reason: str | None = None) -> StreamClosed:
        return cls(spec_for(exc).close, client_message(exc) if reason is None else reason)


@dataclass
class Frame:
    index: int
    data: bytes
    received: float  # perf_counter


class TokenBucket:
    """Frame-rate cap that tolerates jitter: ``rate`` frames/s on average, bursts of ``burst``."""

    def __init__(self, rate: float, burst: float = 2.0) -> None:
        self.rate, self.burst = rate, max(burst, 1.0)
        self.tokens = self.burst
        self.last = time.perf_counter()

    def take(self, now: float) -> float:
        """0 and one token used if one is there, else the seconds until there will be one."""
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


def origin_allowed(ws: WebSocket, settings: Settings) -> bool:
    """Browsers always send ``Origin`` on a WebSocket and let any page open one to any server:
    only the server's own page (same host) and ``EMOTION_CORS_ORIGINS`` are let in. Clients that
    are not browsers send no Origin and are not affected."""
    origin = ws.headers.get("origin")
    if origin is None or "*" in settings.cors_origins or origin in settings.cors_origins:
        return True
    return urlsplit(origin).netloc.lower() == ws.headers.get("host", "").lower()


def client_key(ws: WebSocket, settings: Settings) -> str:
    """Who holds a stream slot: the API key (hashed, never kept) when keys are on, else the address."""
    key = presented_key(ws, allow_query=True)
    if settings.auth_enabled and key:
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return "addr:" + (ws.client.host if ws.client else "?")


def _short_error(parts: list[str]) -> str:
    text = "; ".join(parts[:3]) + (f"; and {len(parts) - 3} more" if len(parts) > 3 else "")
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def _short(reason: str) -> str:
    raw = reason.encode()
    return (
        reason
        if len(raw) <= MAX_REASON_BYTES
        else raw[: MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."
    )


async def close_ws(ws: WebSocket, code: int, reason: str) -> None:
    """Close unless either side already has; errors here mean the peer is gone, which is fine."""
    if ws.application_state == WebSocketState.CONNECTED and ws.client_state == WebSocketState.CONNECTED:
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
            await ws.close(code, _short(reason))


class StreamSession:
    def __init__(self, ws: WebSocket, runtime: Runtime) -> None:
        self.ws = ws
        self.runtime = runtime
        settings = runtime.settings
        self.options = default_options(settings)
        self.smoothing = 0.0
        self.tracker = Tracker()
        self.regions = RegionPlanner(settings.stream_redetect_every)
        self.bucket = TokenBucket(settings.stream_max_fps)
        self.received = 0
        self.dropped = 0
        self.pending: Frame | None = None
        self.throttled = False  # the processor is waiting for the frame cap
        self.busy = False  # a frame is being answered
        self.last_activity = time.monotonic()  # a frame received or a reply sent
        self.wake = asyncio.Event()
        self.closing: tuple[int, str] | None = None
        self.done = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        reader = asyncio.create_task(self._read(), name="stream-read")
        processor = asyncio.create_task(self._process(), name="stream-process")
        self._reader = reader
        close: tuple[int, str] | None = None
        try:
            await asyncio.wait({reader, processor}, return_when=asyncio.FIRST_COMPLETED)
            if self.closing is not None:
                # Server shutdown: the reader was cancelled; let the frame in flight be answered.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        asyncio.shield(processor), self.runtime.settings.shutdown_timeout_s
                    )
                close = self.closing
            else:
                for task in (reader, processor):
                    if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
                        close = self._close_for(exc)
                        break
        finally:
            for task in (reader, processor):
                task.cancel()
            await asyncio.gather(reader, processor, return_exceptions=True)
            if close is not None:
                await close_ws(self.ws, *close)
            self.done.set()

    def _close_for(self, exc: BaseException) -> tuple[int, str] | None:
        if isinstance(exc, WebSocketDisconnect | OSError):
            return None  # the client left
        closed = exc if isinstance(exc, StreamClosed) else StreamClosed.for_error(exc)
        label = f"ws_{closed.code}"
        if not isinstance(exc, StreamClosed) and spec_for(exc) is INTERNAL:
            log.error("stream failed", exc_info=exc)
            label = INTERNAL.code  # a bug counts as one, whichever surface it hit
        self.runtime.metrics.errors.labels(code=label).inc()
        return closed.code, closed.reason

    async def close(self, code: int, reason: str) -> None:
        """Ask the session to finish (used at shutdown) and wait until it has."""
        self.closing = (code, reason)
        if self._reader is not None:
            self._reader.cancel()
        self.wake.set()
        await self.done.wait()

    # ------------------------------------------------------------------ reading

    async def _read(self) -> None:
        idle = self.runtime.settings.stream_idle_timeout_s
        while True:
            if idle:
                remaining = self.last_activity + idle - time.monotonic()
                if remaining <= 0:
                    if self.pending is None and not self.busy:
                        raise RequestTimeout(f"no frame for {idle:g} s")
                    remaining = idle  # a frame is still being answered: the client is waiting, not idle
                try:
                    message = await asyncio.wait_for(self.ws.receive(), remaining)
                except TimeoutError:
                    continue  # the deadline is judged once, above, with one reading of the clock
            else:
                message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if (data := message.get("bytes")) is not None:
                self._on_frame(data)
            elif (text := message.get("text")) is not None:
                await self._on_control(text)

    def _on_frame(self, data: bytes) -> None:
        index = self.received
        self.received += 1
        limit = self.runtime.settings.max_body_bytes
        if len(data) > limit:
            raise PayloadTooLarge(f"frame {index} is {len(data)} bytes; limit {limit}")
        if not data.startswith(JPEG_MAGIC):
            raise UnsupportedMediaType(f"frame {index} is not a JPEG")
        self.last_activity = time.monotonic()
        if self.pending is not None:
            self._drop("rate_limit" if self.throttled else "superseded")
        self.pending = Frame(index, data, time.perf_counter())
        self.wake.set()

    def _drop(self, reason: str) -> None:
        self.dropped += 1
        self.runtime.metrics.dropped_frames.labels(reason=reason).inc()

    async def _on_control(self, text: str) -> None:
        # More characters than the limit is more bytes too: refused before encoding or parsing.
        # Fewer may still be more bytes (UTF-8): those are counted.
        chars = len(text)
        size = chars if chars > MAX_CONTROL_BYTES else len(text.encode())
        if size > MAX_CONTROL_BYTES:
            unit = "characters" if chars > MAX_CONTROL_BYTES else "bytes"
            self.runtime.metrics.errors.labels(code="invalid_control").inc()
            await self._send(
                error_body(
                    "invalid_control",
                    f"control message of {size} {unit}; the limit is {MAX_CONTROL_BYTES} bytes",
                )
            )
            return
        try:
            # strict: JSON types as they are (`true` is no max_faces of 1, "0.5" no smoothing)
            control = StreamControl.model_validate_json(text, strict=True)
        except ValidationError as exc:
            parts = [
                f"{'.'.join(map(str, e['loc']))[:40] or 'message'}: {e['msg']}"
                for e in exc.errors(include_url=False, include_input=False)
            ]
            self.runtime.metrics.errors.labels(code="invalid_control").inc()
            await self._send(error_body("invalid_control", f"bad control message: {_short_error(parts)}"))
            return
        if control.smoothing is not None:
            self.smoothing = control.smoothing
        self.options = resolve_options(self.runtime.settings, control, self.options)

    # ------------------------------------------------------------------ processing

    async def _process(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.closing is not None:
                return
            if self.pending is None:
                continue
            while (delay := self.bucket.take(time.perf_counter())) > 0:
                self.throttled = True  # frames arriving meanwhile replace the pending one
                await asyncio.sleep(delay)
                if self.closing is not None:
                    return
            self.throttled = False
            frame, self.pending = self.pending, None
            if frame is not None:
                # The frames dropped so far all came before this one; those dropped while it is
                # answered come after it, and go in the next reply: `dropped` is the gap in `frame`.
                skipped, self.dropped = self.dropped, 0
                self.busy = True
                try:
                    await self._answer(frame, skipped)
                finally:
                    self.busy = False
                    self.last_activity = time.monotonic()

    async def _answer(self, frame: Frame, skipped: int) -> None:
        """Answer ``frame``; ``skipped``: the frames dropped since the previous reply, all before it."""
        runtime = self.runtime
        try:
            image = await runtime.decode(frame.data, formats=("JPEG",))
        except DecodeError as exc:
            raise StreamClosed.for_error(exc, f"frame {frame.index}: {client_message(exc)}") from exc
        regions = self.regions.regions(image.width, image.height) if self.options.detect else None
        while True:
            try:
                result = await runtime.infer(Job(image, self.options, regions))
                break
            except BatcherFull:
                # Load shedding, not a failure. A newer frame replaces this one; without one this is
                # the client's latest, which must be answered: it waits for room in the model's queue.
                if self.pending is not None or self.closing is not None:
                    self.dropped += skipped  # not answered: the next reply counts them, and this frame
                    self._drop("overload")
                    return
                await asyncio.sleep(OVERLOAD_RETRY_S)
        if self.options.detect:
            self.regions.observe([f.box for f in result.faces], regions)
        ids = self.tracker.update(np.array([f.box for f in result.faces], dtype=np.float64).reshape(-1, 4))
        tracks = [
            (tid, self.tracker.smooth(tid, f.probs, self.smoothing))
            for f, tid in zip(result.faces, ids, strict=True)
        ]
        reply = stream_result(frame.index, image, result, runtime.classes, tracks, skipped, frame.received)
        await self._send(reply.model_dump(mode="json"))
        runtime.metrics.frames.inc()
        runtime.metrics.frame_latency.observe(time.perf_counter() - frame.received)

    async def _send(self, payload: dict[str, object]) -> None:
        async with self._send_lock:
            await self.ws.send_json(payload)


async def refuse(ws: WebSocket, metrics: Metrics, error: ApiError) -> None:
    """Accept, then close as the error table says: the client sees the close code and reason
    (a refused handshake would only show an HTTP status)."""
    spec = spec_for(error)
    metrics.errors.labels(code=f"ws_{spec.close}").inc()
    await ws.accept()
    await close_ws(ws, spec.close, client_message(error, spec))


@router.websocket("/v1/stream")
async def stream(websocket: WebSocket, runtime: RuntimeDep) -> None:
    """Refused (bad origin or key, not ready, too many streams) right after the handshake."""
    metrics = runtime.metrics
    settings = runtime.settings
    try:
        if not origin_allowed(websocket, settings):
            raise Forbidden("origin not allowed")
        if not key_is_valid(settings, presented_key(websocket, allow_query=True)):
            raise Unauthorized()
        get_ready_runtime(runtime)
        session = StreamSession(websocket, runtime)
        if (refusal := runtime.streams.try_add(session, client_key(websocket, settings))) is not None:
            raise Overloaded(f"{refusal}; try again later")
    except ApiError as exc:
        await refuse(websocket, metrics, exc)
        return
    metrics.active_streams.inc()
    try:
        await websocket.accept()
        await session.run()
    finally:
        runtime.streams.discard(session)
        metrics.active_streams.dec()
