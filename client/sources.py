"""What both capture backends implement and share: frames, the `Source` and `VideoFrames` interfaces,
image folders.

Kept apart from `client.capture` (which picks a backend and runs the capture thread) so that the
backends (`client.cv_capture`, `client.av_capture`) and the batch jobs (`client.batch`,
`client.backends`) depend on this small module, and nothing on them in turn.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from client.errors import CaptureError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class Frame:
    """One captured frame, already resized and JPEG-encoded for sending."""

    seq: int  # counts captured frames since start (not the wire index, which is per connection)
    # What the window shows, the size that is sent (reply boxes map 1:1 onto it): a BGR numpy array
    # (OpenCV) or a `picture.RgbImage` (PyAV); None when nothing displays or records.
    image: Any
    jpeg: bytes
    captured: float  # time.monotonic()


class Source:
    """A sequence of frames. `live` sources (cameras) are drained, not paced.

    `read` is cheap (a camera's MJPEG packet is not even decoded), because a live source is read
    faster than frames are kept; `prepare` does the work for the frames that are kept.
    """

    live = False
    native_fps: float | None = None

    def read(self) -> Any | None:
        """Next raw frame, or None at the end."""
        raise NotImplementedError

    def prepare(self, raw: Any, width: int | None, quality: int, picture: bool) -> tuple[Any, bytes]:
        """(picture or None, JPEG) of a raw frame, downscaled to at most `width` pixels wide."""
        raise NotImplementedError

    def rewind(self) -> bool:
        """Start again from the first frame (for --loop); False if the source cannot."""
        return False

    def close(self) -> None:
        pass


def image_files(folder: Path) -> list[Path]:
    """The images of a folder in name order; CaptureError when there are none."""
    if not folder.is_dir():
        raise CaptureError(f"image folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise CaptureError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return paths


@dataclass
class VideoFrame:
    index: int
    ts_ms: float
    image: Any  # BGR uint8 array (OpenCV) or picture.RgbImage (PyAV): what a window shows
    source: Any = None  # PyAV: the decoded frame, encoded from directly


class VideoFrames(Protocol):
    """Every `every`-th frame of a video file with its index and its own timestamp (not wall clock)."""

    path: Path
    total: int | None  # frames that will be yielded, when the container says

    def __iter__(self) -> Iterator[VideoFrame]: ...

    def jpeg(self, frame: VideoFrame, quality: int) -> bytes | None:
        """The frame as a JPEG to send; None if encoding failed."""
        ...
