"""Frame sources and the capture thread.

Capture runs in its own thread and publishes into a `LatestFrame` slot that keeps only the
newest frame: a slow network then costs skipped frames, never growing latency, and a slow
camera never stalls the sender or the receiver.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from client.errors import CaptureError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class Frame:
    """One captured frame, already resized and JPEG-encoded for sending."""

    seq: int  # counts captured frames since start (not the wire index, which is per connection)
    image: np.ndarray  # BGR, the size that is sent, so reply boxes map 1:1 onto it
    jpeg: bytes
    captured: float  # time.monotonic()


class Source:
    """A sequence of BGR frames. `live` sources (cameras) are drained, not paced."""

    live = False
    native_fps: float | None = None

    def read(self) -> np.ndarray | None:
        """Next frame, or None at the end."""
        raise NotImplementedError

    def rewind(self) -> bool:
        """Start again from the first frame (for --loop); False if the source cannot."""
        return False

    def close(self) -> None:
        pass


class _CvSource(Source):
    def __init__(self, cap: cv2.VideoCapture) -> None:
        self._cap = cap
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.native_fps = fps if 0.5 < fps < 240 else None

    def read(self) -> np.ndarray | None:
        ok, frame = self._cap.read()
        return frame if ok and frame is not None else None

    def close(self) -> None:
        self._cap.release()


class CameraSource(_CvSource):
    live = True

    def __init__(self, index: int) -> None:
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # our message replaces its warnings
        try:
            cap = cv2.VideoCapture(index)
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not cap.isOpened():
            cap.release()
            raise CaptureError(
                f"cannot open camera {index}: no such device, or it is in use by another program, "
                "or this user may not access it (try another --camera N, or --video FILE / --images DIR)"
            )
        super().__init__(cap)
        if self.read() is None:
            self.close()
            raise CaptureError(
                f"camera {index} opened but returned no frame (is it in use or covered by a driver?)"
            )


class VideoSource(_CvSource):
    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise CaptureError(f"video file not found: {path}")
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            cap.release()
            raise CaptureError(
                f"cannot decode video {path} (unsupported container or codec for this OpenCV build)"
            )
        super().__init__(cap)

    def rewind(self) -> bool:
        return bool(self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0))


class ImageDirSource(Source):
    native_fps = 2.0

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise CaptureError(f"image folder not found: {folder}")
        self._paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._paths:
            raise CaptureError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
        self._it: Iterator[Path] = iter(self._paths)

    def read(self) -> np.ndarray | None:
        for path in self._it:
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is not None:
                return img
        return None

    def rewind(self) -> bool:
        self._it = iter(self._paths)
        return True


def open_source(camera: int | None = None, video: Path | None = None, images: Path | None = None) -> Source:
    if video is not None:
        return VideoSource(video)
    if images is not None:
        return ImageDirSource(images)
    return CameraSource(camera or 0)


def resize_to_width(img: np.ndarray, width: int | None) -> np.ndarray:
    """Downscale (never upscale) to `width`: the server's detector gains nothing from more pixels."""
    h, w = img.shape[:2]
    if not width or w <= width:
        return img
    return cv2.resize(img, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)


def encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise CaptureError("JPEG encoding failed")
    return buf.tobytes()


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
    ) -> None:
        super().__init__(name="capture", daemon=True)
        self.source, self.slot = source, slot
        rate = fps or (None if source.live else source.native_fps)
        self.period = 1.0 / rate if rate else 0.0
        self.width, self.quality, self.loop_source = width, quality, loop_source
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
            img = self.source.read()
            if img is None:
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
            small = resize_to_width(img, self.width)
            self.slot.put(Frame(seq, small, encode_jpeg(small, self.quality), time.monotonic()))
            seq += 1
