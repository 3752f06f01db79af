"""OpenCV capture (the `camera` extra): cameras, video files and image folders as BGR arrays."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# FFmpeg's own log lines ("moov atom not found") would come before the client's message for a video
# it cannot read, which says so; read once, at the first capture. Set it yourself to see them again.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2  # after the variable above
import numpy as np

from client.errors import CaptureError
from client.sources import Source, VideoFrame, image_files


class _ArraySource(Source):
    """Raw frames are BGR arrays already; prepare() resizes and encodes them."""

    def prepare(self, raw: Any, width: int | None, quality: int, picture: bool) -> tuple[Any, bytes]:
        small = resize_to_width(raw, width)
        return small, encode_jpeg(small, quality)


class _CvSource(_ArraySource):
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

    def __init__(self, index: int | str) -> None:
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


class ImageDirSource(_ArraySource):
    native_fps = 2.0

    def __init__(self, folder: Path) -> None:
        self._paths = image_files(folder)
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


class VideoFileFrames:
    """`sources.VideoFrames` read by OpenCV, as BGR arrays."""

    def __init__(self, path: Path, every: int = 1) -> None:
        self.path, self.every = path, max(1, every)
        self._cap = cv2.VideoCapture(str(path))
        if not self._cap.isOpened():
            self._cap.release()
            raise OSError(f"cannot decode video {path} (unsupported container or codec)")
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.total = -(-count // self.every) if count > 0 else None

    def __iter__(self) -> Iterator[VideoFrame]:
        cap, index = self._cap, 0
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
        ok, buf = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        return buf.tobytes() if ok else None
