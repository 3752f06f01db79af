"""The capture thread, and which capture library opens a source (`client.sources` defines them).

Capture runs in its own thread and publishes into a `LatestFrame` slot that keeps only the
newest frame: a slow network then costs skipped frames, never growing latency, and a slow
camera never stalls the sender or the receiver.

Two backends implement `client.sources.Source`: OpenCV (`client/cv_capture.py`, the `camera` extra) and PyAV
(`client/av_capture.py`, the lean `webcam` extra, no numpy). `open_source` picks OpenCV when it
is installed, else PyAV; this module imports neither.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from pathlib import Path

from client.errors import UsageError
from client.sources import Frame, Source, VideoFrames

BACKENDS = ("auto", "opencv", "av")
INSTALL_HINT = (
    "pip install 'emotion-service[webcam]' (PyAV, the lean install) or 'emotion-service[camera]' (OpenCV)"
)


def capture_backend(name: str = "auto") -> str:
    """'opencv' or 'av': the one asked for, else OpenCV if installed, else PyAV; UsageError if neither."""
    if name not in BACKENDS:
        raise UsageError(f"unknown capture backend {name!r} (one of {', '.join(BACKENDS)})")
    wanted = ("opencv", "av") if name == "auto" else (name,)
    for backend in wanted:
        if importlib.util.find_spec("cv2" if backend == "opencv" else "av") is not None:
            return backend
    what = "OpenCV" if name == "opencv" else "PyAV" if name == "av" else "a capture library"
    raise UsageError(f"streaming a camera, video or image folder needs {what}: {INSTALL_HINT}")


def open_source(
    camera: int | str | None = None,
    video: Path | None = None,
    images: Path | None = None,
    backend: str = "auto",
) -> Source:
    """The camera (an index, or a device path / name), video file or image folder, opened now so a
    bad one fails before anything else starts."""
    if capture_backend(backend) == "opencv":
        from client import cv_capture as impl
    else:
        from client import av_capture as impl  # type: ignore[no-redef]
    if video is not None:
        return impl.VideoSource(video)
    if images is not None:
        return impl.ImageDirSource(images)
    return impl.CameraSource(0 if camera is None else camera)


def open_video(path: Path, every: int = 1, capture: str = "auto") -> VideoFrames:
    """A video file's frames for the batch job (`predict clip.mp4`), read by the backend `capture`
    names or picks; FileNotFoundError for a missing file, OSError for one it cannot decode."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if capture_backend(capture) == "opencv":
        from client import cv_capture as impl
    else:
        from client import av_capture as impl  # type: ignore[no-redef]
    return impl.VideoFileFrames(path, every)


class LatestFrame:
    """Single-slot mailbox between the capture thread and the asyncio sender.

    `latest` is what the display shows; `take()` hands the sender the newest unsent frame.
    Frames overwritten before they were sent are counted in `skipped`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: Frame | None = None
        self.latest: Frame | None = None
        self.skipped = 0
        self.finished = False
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def _wake(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._ready.set)

    def put(self, frame: Frame) -> None:
        with self._lock:
            if self._pending is not None:
                self.skipped += 1
            self._pending = frame
            self.latest = frame
        self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        with self._lock:
            self.finished = True
            self.error = error
        self._wake()

    async def take(self) -> Frame | None:
        """Wait for an unsent frame; None once the source is exhausted (and everything taken)."""
        while True:
            with self._lock:
                frame, self._pending = self._pending, None
                done = self.finished
            if frame is not None:
                return frame
            if done:
                return None
            self._ready.clear()
            await self._ready.wait()


class CaptureThread(threading.Thread):
    """Reads, paces, resizes and encodes frames off the event loop."""

    def __init__(
        self,
        source: Source,
        slot: LatestFrame,
        fps: float | None,
        width: int | None,
        quality: int,
        loop_source: bool = False,
        pictures: bool = True,
    ) -> None:
        super().__init__(name="capture", daemon=True)
        self.source, self.slot = source, slot
        rate = fps or (None if source.live else source.native_fps)
        self.period = 1.0 / rate if rate else 0.0
        self.width, self.quality, self.loop_source = width, quality, loop_source
        self.pictures = pictures  # False: nothing displays or records, so only the JPEG is made
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        error: BaseException | None = None
        try:
            self._run()
        except BaseException as exc:  # reported to the event loop via the slot, not lost in the thread
            error = exc
        finally:
            self.source.close()
            self.slot.finish(error)

    def _run(self) -> None:
        seq = 0
        due = time.monotonic()
        while not self._halt.is_set():
            raw = self.source.read()
            if raw is None:
                if self.loop_source and seq and self.source.rewind():
                    continue
                return
            now = time.monotonic()
            if self.source.live:
                if now < due:  # drain the camera buffer so the next frame we keep is fresh
                    continue
            elif now < due and self._halt.wait(due - now):
                return
            due = max(due + self.period, time.monotonic() - self.period)
            picture, jpeg = self.source.prepare(raw, self.width, self.quality, self.pictures)
            self.slot.put(Frame(seq, picture, jpeg, time.monotonic()))
            seq += 1
