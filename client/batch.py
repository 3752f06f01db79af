"""Batch and video jobs: files, folders and videos in, one reply per image or frame out.

One implementation behind `emotion-client analyze` (in-process by default, `--server URL` for a
server) and `emotion-client predict` (the same job against a server by default): images go one
model batch at a time in-process or as concurrent `POST /v1/predict` calls to a server; a video is
read frame by frame (every frame, or every Nth) with its own frame index and timestamp, and its
faces keep a track id across frames (the in-process tracker, or the server's over one WebSocket
sent in lockstep so no frame is dropped). A file that cannot be read or decoded is reported and
skipped; a server that cannot be reached or refuses the key ends the job.
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from client.errors import AuthError, ClientError, ServerError, ServerUnavailable, UsageError
from client.sources import VideoFrame
from shared.emotions import EMOTIONS
from shared.protocol import ErrorBody, ErrorDetail, FaceResult, PredictResponse, StreamControl, StreamResult

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})
#: HTTP statuses that concern the one file sent, so the job records them and goes on.
PER_FILE_STATUSES = frozenset({400, 408, 413, 415, 422, 500})


@dataclass(frozen=True)
class JobOptions:
    """The API's per-request options (`POST /v1/predict` query, stream control) and video sampling."""

    max_faces: int | None = None
    min_confidence: float | None = None
    detect: bool = True
    every: int = 1  # video: process every Nth frame
    smoothing: float | None = None  # server video: the stream's per-track EMA factor

    def query(self) -> dict[str, str]:
        q = {"detect": "true" if self.detect else "false"}
        if self.max_faces is not None:
            q["max_faces"] = str(self.max_faces)
        if self.min_confidence is not None:
            q["min_confidence"] = str(self.min_confidence)
        return q

    def control(self) -> StreamControl:
        return StreamControl(
            max_faces=self.max_faces,
            min_confidence=self.min_confidence,
            detect=self.detect,
            smoothing=self.smoothing,
        )


@dataclass
class Record:
    """One image or one video frame: its reply, or why it has none."""

    file: str
    reply: PredictResponse | None = None
    frame: int | None = None  # video: index of the frame in the file, from 0
    ts_ms: float | None = None  # video: the frame's own timestamp in the file
    error: ErrorDetail | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"file": self.file}
        if self.frame is not None:
            ts = round(self.ts_ms or 0.0, 3)
            doc.update(frame=self.frame, ts_ms=ts, ts=round(ts / 1000.0, 6))  # ts: what `plot` reads
        if self.error is not None:
            doc["error"] = self.error.model_dump()
        elif self.reply is not None:
            doc.update(self.reply.model_dump(mode="json"))
        return doc


def failed(file: str, code: str, message: str, **where: Any) -> Record:
    return Record(file, error=ErrorDetail(code=code, message=message), **where)


# ---------------------------------------------------------------------------------------- inputs


def expand(paths: Sequence[Path]) -> list[Path]:
    """Folders become their image and video files (recursively, in name order); files stay as given,
    whatever their suffix, so a wrong file named on the command line is reported, not ignored."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            media = IMAGE_SUFFIXES | VIDEO_SUFFIXES
            out.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in media))
        else:
            out.append(path)
    return out


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def require_cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise UsageError("annotated images need OpenCV: pip install 'emotion-service[camera]'") from exc
    return cv2


class VideoFrames(Protocol):
    """Every `every`-th frame of a video file with its index and its own timestamp (not wall clock)."""

    path: Path
    total: int | None  # frames that will be yielded, when the container says

    def __iter__(self) -> Iterator[VideoFrame]: ...

    def jpeg(self, frame: VideoFrame, quality: int) -> bytes | None:
        """The frame as a JPEG to send; None if encoding failed."""
        ...


def open_video(path: Path, every: int = 1, capture: str = "auto") -> VideoFrames:
    """OpenCV's reader when it is installed (the camera extra, and the server's), else PyAV's (webcam),
    or the one `capture` names; OSError for a file it cannot decode, UsageError when none is installed."""
    from client.capture import capture_backend

    if capture_backend(capture) == "opencv":
        return CvVideoFrames(path, every)
    from client.av_capture import VideoFileFrames

    return VideoFileFrames(path, every)


class CvVideoFrames:
    """`VideoFrames` read by OpenCV, as BGR arrays."""

    def __init__(self, path: Path, every: int = 1) -> None:
        cv2 = self.cv2 = require_cv2()
        self.path, self.every = path, max(1, every)
        self._cap = cv2.VideoCapture(str(path))
        if not self._cap.isOpened():
            self._cap.release()
            raise OSError(f"cannot decode video {path} (unsupported container or codec)")
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.total = -(-count // self.every) if count > 0 else None

    def __iter__(self) -> Iterator[VideoFrame]:
        cv2, cap, index = self.cv2, self._cap, 0
        try:
            while True:
                if index % self.every:
                    if not cap.grab():  # skipped frames are not decoded
                        return
                else:
                    ok, image = cap.read()
                    if not ok or image is None:
                        return
                    yield VideoFrame(index, float(cap.get(cv2.CAP_PROP_POS_MSEC)), image)
                index += 1
        finally:
            cap.release()

    def jpeg(self, frame: VideoFrame, quality: int) -> bytes | None:
        ok, buf = self.cv2.imencode(".jpg", frame.image, [self.cv2.IMWRITE_JPEG_QUALITY, quality])
        return buf.tobytes() if ok else None


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# -------------------------------------------------------------------------------------- backends


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
                    return failed(str(path), exc.code or f"http_{exc.status}", str(exc))
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


class LockstepStream:
    """`WS /v1/stream` with one frame in flight: every frame sent is answered, in order.

    A connection lost mid-video is reopened (with backoff, for up to `retry_for` seconds, e.g.
    through a proxy to another replica) and the unanswered frame is sent again; track ids then
    restart, as they do on any new stream. A server that never answered fails at once.
    """

    def __init__(
        self, server: str, api_key: str | None, control: StreamControl, retry_for: float = 30.0
    ) -> None:
        from shared.protocol import ModelRef

        self.server, self.api_key, self.control, self.retry_for = server, api_key, control, retry_for
        self.model = ModelRef(name="server", version="stream")
        self.reconnects = 0
        self._connected_once = False
        self._ws: Any = None
        self._sent = 0
        try:
            from client.transport import server_info

            model = server_info(server, api_key).get("model", {})
            if isinstance(model, dict):
                self.model = ModelRef(name=str(model.get("name")), version=str(model.get("version")))
        except ClientError:
            pass

    def _connect(self) -> None:
        from websockets.exceptions import InvalidStatus, WebSocketException
        from websockets.sync.client import connect

        from client.transport import AUTH_STATUSES, auth_headers, ws_url

        url = ws_url(self.server)
        try:
            ws = connect(url, additional_headers=auth_headers(self.api_key), open_timeout=10, max_size=2**22)
            # Entered like a context manager (closed in close()): websockets 17.1+ deprecates a bare
            # connect(), and its `legacy=True` spelling does not exist in the older versions we support.
            self._ws = ws.__enter__()
        except InvalidStatus as exc:
            if exc.response.status_code in AUTH_STATUSES:
                raise AuthError(f"API key refused by {url}; pass --api-key") from exc
            raise ServerUnavailable(f"{url} refused the stream: HTTP {exc.response.status_code}") from exc
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise ServerUnavailable(f"cannot connect to {url}: {exc or type(exc).__name__}") from exc
        self._sent = 0
        self._connected_once = True
        self._ws.send(self.control.model_dump_json(exclude_none=True))

    def _exchange(self, jpeg: bytes) -> StreamResult:
        from websockets.exceptions import ConnectionClosed

        from client.transport import parse_stream_message

        try:
            if self._ws is None:
                self._connect()
            index = self._sent
            self._ws.send(jpeg)
            self._sent += 1
            while True:
                msg = self._ws.recv(timeout=60)
                parsed = parse_stream_message(msg)
                if isinstance(parsed, ErrorBody):
                    raise ServerError(f"stream error {parsed.error.code}: {parsed.error.message}")
                if parsed.frame == index:
                    return parsed
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            reason = exc.rcvd.reason if exc.rcvd else ""
            self._ws = None
            if code == 1008:
                raise AuthError(
                    f"server closed the stream: policy violation {reason}; check --api-key"
                ) from exc
            if code in (1003, 1009):
                raise ServerError(f"server refused a frame ({code} {reason})") from exc
            raise ServerUnavailable(f"stream closed ({code} {reason})".strip()) from exc
        except (OSError, TimeoutError) as exc:
            self._ws = None
            raise ServerUnavailable(f"stream lost: {exc or type(exc).__name__}") from exc

    def ask(self, jpeg: bytes) -> StreamResult:
        from client.transport import Backoff

        backoff, deadline = Backoff(), time.monotonic() + self.retry_for
        while True:
            try:
                return self._exchange(jpeg)
            except ServerUnavailable:
                if not self._connected_once or time.monotonic() > deadline:
                    raise  # a server that never answered fails at once; a lost one is retried
                self.close()
                self.reconnects += 1
                time.sleep(backoff.next_delay())

    def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close()
            self._ws = None


# --------------------------------------------------------------------------------------- outputs

CSV_COLUMNS = [
    "file",
    "frame",
    "ts_ms",
    "face",
    "track_id",
    "x",
    "y",
    "w",
    "h",
    "confidence",
    "dominant",
    *EMOTIONS,
    "error",
]


class Writer(Protocol):
    def write(self, record: Record) -> None: ...


class JsonlWriter:
    """One line per image or video frame: the `/v1/predict` reply plus file (frame, ts_ms, ts), or error."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh

    def write(self, record: Record) -> None:
        self.fh.write(json.dumps(record.to_json(), separators=(",", ":")) + "\n")
        self.fh.flush()


class CsvWriter:
    """One row per face; an image or frame without faces, or a bad file, still gets one row."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh
        self.csv = csv.DictWriter(fh, CSV_COLUMNS, extrasaction="ignore")
        self.csv.writeheader()

    def write(self, record: Record) -> None:
        base: dict[str, Any] = {"file": record.file, "frame": record.frame}
        if record.ts_ms is not None:
            base["ts_ms"] = round(record.ts_ms, 3)
        if record.error is not None:
            self.csv.writerow({**base, "error": f"{record.error.code}: {record.error.message}"})
        elif record.reply is not None and record.reply.faces:
            for i, face in enumerate(record.reply.faces):
                self.csv.writerow({**base, **face_columns(face), "face": i})
        else:
            self.csv.writerow(base)
        self.fh.flush()


def face_columns(face: FaceResult) -> dict[str, Any]:
    b = face.box
    row: dict[str, Any] = {
        "track_id": face.track_id,
        "x": b.x,
        "y": b.y,
        "w": b.w,
        "h": b.h,
        "confidence": round(face.confidence, 6),
        "dominant": face.dominant,
    }
    row.update({name: round(p, 6) for name, p in face.emotions.items()})
    return row


def output_format(path: Path | None, fmt: str | None) -> str:
    if fmt:
        return fmt
    return "csv" if path is not None and path.suffix.lower() == ".csv" else "jsonl"


@contextlib.contextmanager
def open_writer(path: Path | None, fmt: str) -> Iterator[Writer]:
    """`path` None or '-' is stdout."""
    if path is None or str(path) == "-":
        yield CsvWriter(sys.stdout) if fmt == "csv" else JsonlWriter(sys.stdout)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        yield CsvWriter(fh) if fmt == "csv" else JsonlWriter(fh)


# ------------------------------------------------------------------------------------------- job


@dataclass
class Summary:
    files: int = 0
    images: int = 0
    videos: int = 0
    frames: int = 0
    faces: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)  # (file, code)
    plots: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    reconnects: int = 0

    def line(self) -> str:
        done = self.images + self.frames
        rate = f"{done / self.seconds:.1f}/s" if self.seconds > 0 else "-"
        parts = [f"{self.files} file(s): {self.images} image(s)"]
        if self.videos:
            parts.append(f"{self.videos} video(s) with {self.frames} frame(s)")
        text = ", ".join(parts) + f"; {self.faces} face(s) in {self.seconds:.1f} s ({rate})"
        text += f"; {len(self.bad)} bad file(s) skipped" if self.bad else "; no bad files"
        if self.bad:
            text += (
                ": "
                + ", ".join(f"{f} ({c})" for f, c in self.bad[:5])
                + (" ..." if len(self.bad) > 5 else "")
            )
        return text


def log(msg: str) -> None:
    print(f"emotion-client: {msg}", file=sys.stderr, flush=True)


def _progress(total: int | None, unit: str, enabled: bool | None) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, disable=(None if enabled is None else not enabled), file=sys.stderr)


FrameHook = Callable[[Any, Record], bool]  # (picture, record) -> False to stop


def run_job(
    paths: Sequence[Path],
    backend: Backend,
    writer: Writer,
    *,
    every: int = 1,
    annotate: Path | None = None,
    plot: Callable[[Path, Path], Path | None] | None = None,
    progress: bool | None = None,
    on_frame: FrameHook | None = None,
    capture: str = "auto",
) -> Summary:
    """Process `paths` (files; see :func:`expand`), writing every record as it comes; never raises for
    a bad file, only for a server that is gone (:class:`ServerUnavailable`) or refuses the key.

    `plot(video, session_jsonl)` draws a video's timeline and returns where it wrote it;
    `on_frame(picture, record)` sees every processed video frame (a live window) and may stop the job;
    `capture` picks the video reader (`client.capture.capture_backend`).
    """
    files = expand(paths)
    if not files:
        raise UsageError("no images or videos found in " + ", ".join(map(str, paths)))
    summary = Summary(files=len(files))
    started = time.perf_counter()
    images = [p for p in files if not is_video(p)]
    videos = [p for p in files if is_video(p)]
    opened: list[tuple[Path, VideoFrames | None, str | None]] = []
    for v in videos:
        try:
            opened.append((v, open_video(v, every, capture), None))
        except OSError as exc:
            opened.append((v, None, str(exc)))
    totals = [len(images)] + [f.total for _, f, _ in opened if f is not None]
    total = None if any(t is None for t in totals) else sum(t for t in totals if t is not None)
    bar = _progress(total, "frame" if videos else "img", progress)

    def bad(record: Record) -> None:
        assert record.error is not None
        summary.bad.append((record.file, record.error.code))
        bar.write(
            f"emotion-client: skipped {record.file}: {record.error.code}: {record.error.message}",
            file=sys.stderr,
        )

    try:
        for record in backend.images(images):
            writer.write(record)
            bar.update(1)
            if record.error is not None:
                bad(record)
                continue
            summary.images += 1
            assert record.reply is not None
            summary.faces += len(record.reply.faces)
            if annotate is not None:
                out = annotate / f"{Path(record.file).stem}.annotated.png" if len(files) > 1 else annotate
                annotate_image(Path(record.file), record.reply.faces, out)
        for path, frames, error in opened:
            if frames is None:
                record = failed(str(path), "invalid_video", error or "cannot decode")
                writer.write(record)
                bad(record)
                continue
            summary.videos += 1
            with _timeline(plot is not None, path.stem) as timeline:
                frames_out = backend.video(path, frames)
                for frame, record in frames_out:
                    writer.write(record)
                    bar.update(1)
                    summary.frames += 1
                    if record.reply is not None:
                        summary.faces += len(record.reply.faces)
                        if timeline is not None:
                            timeline.write(json.dumps(record.to_json()) + "\n")
                    if on_frame is not None and not on_frame(frame.image, record):
                        frames_out.close()  # closes the stream now, not when collected
                        break
                if plot is not None and timeline is not None:
                    timeline.flush()
                    if (written := plot(path, Path(timeline.name))) is not None:
                        summary.plots.append(written)
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - started
        summary.reconnects = getattr(backend, "reconnects", 0)
    return summary


@contextlib.contextmanager
def _timeline(enabled: bool, name: str) -> Iterator[IO[str] | None]:
    """Per-frame records for the plot, in a temporary file (a long video never sits in memory);
    named after the video, since the plot's title shows the file name."""
    if not enabled:
        yield None
        return
    with (
        tempfile.TemporaryDirectory() as tmp,
        (Path(tmp) / f"{name}.jsonl").open("w", encoding="utf-8") as fh,
    ):
        yield fh


def annotate_image(image: Path, faces: Sequence[FaceResult], out: Path) -> None:
    cv2 = require_cv2()
    import numpy as np

    from client.overlay import draw_result

    # IMREAD_COLOR applies EXIF orientation, matching the server's "EXIF-upright" boxes
    img = cv2.imdecode(np.frombuffer(image.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ClientError(f"cannot decode {image} locally to annotate it")
    annotated = draw_result(img, list(faces))
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), annotated):
        raise ClientError(f"cannot write {out} (unknown image extension?)")
    log(f"wrote {out}")
