"""The two kinds of captured picture and the conversions the windows need.

The OpenCV backend captures BGR numpy arrays; the PyAV backend (the lean `webcam` install, no
numpy) captures `RgbImage`: packed rgb24 bytes. Every window accepts both: Tk reads PPM, so an
`RgbImage` reaches the screen without numpy or Pillow; the OpenCV windows get an array.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RgbImage:
    width: int
    height: int
    data: bytes  # rows of width * 3 bytes, no padding

    def __post_init__(self) -> None:
        if len(self.data) != self.width * self.height * 3:
            raise ValueError(f"{len(self.data)} bytes is not a {self.width}x{self.height} rgb24 image")


def size_of(picture: Any) -> tuple[int, int]:
    """(width, height) of an RgbImage or a numpy image."""
    if isinstance(picture, RgbImage):
        return picture.width, picture.height
    return int(picture.shape[1]), int(picture.shape[0])


def to_ppm(picture: Any) -> bytes:
    """Binary PPM (P6), which Tk's PhotoImage reads natively."""
    if isinstance(picture, RgbImage):
        w, h, data = picture.width, picture.height, picture.data
    else:  # BGR array from the OpenCV backend
        h, w = picture.shape[:2]
        data = picture[..., ::-1].tobytes()
    return b"P6 %d %d 255\n" % (w, h) + data


def to_bgr(picture: Any) -> Any:
    """A BGR numpy array for OpenCV drawing (the numpy picture itself, else a converted copy)."""
    if not isinstance(picture, RgbImage):
        return picture
    import numpy as np

    rgb = np.frombuffer(picture.data, np.uint8).reshape(picture.height, picture.width, 3)
    return np.ascontiguousarray(rgb[..., ::-1])
