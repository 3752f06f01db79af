"""Where a batch job's images and video frames are analysed: in-process, or by a server.

Both yield one `Record` per image or frame, in input order; a bad file becomes a record with its
error, and only a server that is gone or refuses the key raises.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from client.errors import AuthError, ClientError, ServerError, UsageError
from client.lockstep import LockstepStream
from client.records import JobOptions, Record, failed
from client.sources import VideoFrame, VideoFrames
from shared.protocol import PredictResponse

#: HTTP statuses that concern the one file sent, so the job records them and goes on.
PER_FILE_STATUSES = frozenset({400, 408, 413, 415, 422, 500})


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Backend(Protocol):
    def images(self, paths: Sequence[Path]) -> Iterator[Record]:
        """One record per path, in order."""
        ...

    def video(self, path: Path, frames: VideoFrames) -> Generator[tuple[VideoFrame, Record], None, None]: ...

    def close(self) -> None: ...


class LocalBackend:
    """In-process, through :class:`emotion_service.EmotionAnalyzer` (needs the server extra)."""

    def __init__(
        self,
        options: JobOptions,
        batch_size: int = 8,
        device: str = "auto",
        checkpoint: Path | None = None,
    ) -> None:
        try:
            from emotion_service import EmotionAnalyzer
        except ImportError as exc:
            raise UsageError(
                f"in-process analysis needs the models ({exc.name} is missing): "
                "pip install 'emotion-service[server]', or pass --server URL"
            ) from exc
        try:
            self.analyzer = EmotionAnalyzer(checkpoint, device=device)
            self.opts = self.analyzer.options(options.max_faces, options.min_confidence, options.detect)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        self.options = options
        self.batch_size = max(1, batch_size)

    def images(self, paths: Sequence[Path]) -> Iterator[Record]:
        from server.pipeline.decode import DecodeError
        from server.pipeline.runner import Job

        for chunk in _chunks(paths, self.batch_size):
            started = time.perf_counter()
            slots: list[Any] = []
            for path in chunk:
                try:
                    slots.append(self.analyzer.decode(path))
                except DecodeError as exc:
                    slots.append(failed(str(path), exc.code, str(exc)))
                except OSError as exc:
                    code = "not_found" if isinstance(exc, FileNotFoundError) else "unreadable"
                    slots.append(failed(str(path), code, f"{exc.strerror or exc}"))
            good = [s for s in slots if not isinstance(s, Record)]
            results = iter(self.analyzer.run_batch([Job(d, self.opts) for d in good]) if good else [])
            for path, slot in zip(chunk, slots, strict=True):
                if isinstance(slot, Record):
                    yield slot
                else:
                    yield Record(str(path), self.analyzer.response(slot, next(results), started))

    def video(self, path: Path, frames: VideoFrames) -> Generator[tuple[VideoFrame, Record], None, None]:
        import numpy as np

        from server.pipeline.track import Tracker

        tracker = Tracker()
        o = self.options
        for chunk in _chunks(frames, self.batch_size):
            replies = self.analyzer.analyze_batch(
                [f.image for f in chunk],
                channels="bgr",
                max_faces=o.max_faces,
                min_confidence=o.min_confidence,
                detect=o.detect,
            )
            for frame, reply in zip(chunk, replies, strict=True):
                boxes = [(f.box.x, f.box.y, f.box.x + f.box.w, f.box.y + f.box.h) for f in reply.faces]
                ids = tracker.update(
                    np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
                )  # an empty frame still counts as a miss for every track
                faces = [f.model_copy(update={"track_id": i}) for f, i in zip(reply.faces, ids, strict=True)]
                record = Record(
                    str(path), reply.model_copy(update={"faces": faces}), frame.index, frame.ts_ms
                )
                yield frame, record

    def close(self) -> None:
        pass


class RemoteBackend:
    """Against a server: concurrent REST calls for images, one lockstep WebSocket per video."""

    def __init__(
        self,
        server: str,
        api_key: str | None,
        options: JobOptions,
        concurrency: int = 4,
        retries: int = 4,
        quality: int = 90,
    ) -> None:
        import httpx

        self.server, self.api_key, self.options = server, api_key, options
        self.concurrency = max(1, concurrency)
        self.retries, self.quality = retries, quality
        self._http = httpx.Client(limits=httpx.Limits(max_connections=self.concurrency))
        self.reconnects = 0

    def _one(self, path: Path) -> Record:
        from client.transport import Backoff, predict

        try:
            data = path.read_bytes()
        except OSError as exc:
            code = "not_found" if isinstance(exc, FileNotFoundError) else "unreadable"
            return failed(str(path), code, f"{exc.strerror or exc}")
        backoff = Backoff(initial=0.2, maximum=2.0)
        for attempt in range(self.retries + 1):
            try:
                reply = predict(
                    self.server,
                    data,
                    self.api_key,
                    params=self.options.query(),
                    client=self._http,
                    name=path.name,
                )
                return Record(str(path), reply)
            except AuthError:
                raise
            except ServerError as exc:
                if exc.status == 503 and attempt < self.retries:  # loading or overloaded: worth a retry
                    time.sleep(backoff.next_delay())
                    continue
                if exc.status in PER_FILE_STATUSES or exc.status == 503:
                    return failed(str(path), exc.code or f"http_{exc.status}", exc.detail or str(exc))
                raise
        raise AssertionError("unreachable")

    def images(self, paths: Sequence[Path]) -> Iterator[Record]:
        """In input order, with up to `concurrency` requests in flight (the server batches them)."""
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="predict") as pool:
            window: deque[Future[Record]] = deque()
            todo = iter(paths)
            try:
                for path in todo:
                    window.append(pool.submit(self._one, path))
                    if len(window) >= self.concurrency * 2:
                        yield window.popleft().result()
                while window:
                    yield window.popleft().result()
            finally:
                for fut in window:
                    fut.cancel()

    def _frame_interval(self) -> float:
        """Sending at most at the server's per-stream cap means no frame is ever dropped by it."""
        from client.transport import server_info

        try:
            limits = server_info(self.server, self.api_key).get("limits", {})
            fps = float(limits.get("stream_max_fps", 30.0)) if isinstance(limits, dict) else 30.0
        except (ClientError, ValueError):
            fps = 30.0
        return 1.0 / (fps * 0.9)

    def video(self, path: Path, frames: VideoFrames) -> Generator[tuple[VideoFrame, Record], None, None]:
        interval = self._frame_interval()
        stream = LockstepStream(self.server, self.api_key, self.options.control())
        try:
            last = 0.0
            for frame in frames:
                jpeg = frames.jpeg(frame, self.quality)
                if jpeg is None:
                    yield frame, failed(str(path), "encode_failed", "JPEG encoding failed", frame=frame.index)
                    continue
                wait = last + interval - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                last = time.monotonic()
                result = stream.ask(jpeg)
                reply = PredictResponse(
                    faces=result.faces, image=result.image, model=stream.model, timing_ms=result.timing_ms
                )
                yield frame, Record(str(path), reply, frame.index, frame.ts_ms)
        finally:
            self.reconnects += stream.reconnects
            stream.close()

    def close(self) -> None:
        self._http.close()
