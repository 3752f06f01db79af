"""Bytes -> upright RGB tensor, with the size checks done before the expensive part.

The format is sniffed from the bytes (clients' Content-Type headers are unreliable)
and the pixel count is read from the header, so a small file that claims to be a
gigapixel image is refused before any pixel is decoded. EXIF orientation is
applied, so boxes refer to the image as people see it. Runs in a worker thread.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

#: Pillow format name -> the magic bytes that identify it.
SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "WEBP": (b"RIFF",),  # plus "WEBP" at offset 8, checked below
}
SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP")
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


class DecodeError(ValueError):
    """The bytes cannot become an image; ``code`` is the API error code."""

    code = "invalid_image"


class UnsupportedImage(DecodeError):
    code = "unsupported_media_type"


class CorruptImage(DecodeError):
    code = "invalid_image"


class ImageTooLarge(DecodeError):
    code = "image_too_large"


@dataclass
class DecodedImage:
    """(3, H, W) uint8 RGB on the CPU, upright; ``decode_ms`` is what producing it cost."""

    tensor: torch.Tensor
    decode_ms: float

    @property
    def height(self) -> int:
        return int(self.tensor.shape[1])

    @property
    def width(self) -> int:
        return int(self.tensor.shape[2])


def sniff_format(data: bytes) -> str | None:
    """The Pillow format name of ``data`` if it is one we accept, from its magic bytes."""
    for fmt, magics in SIGNATURES.items():
        if any(data.startswith(m) for m in magics):
            if fmt == "WEBP" and data[8:12] != b"WEBP":
                continue
            return fmt
    return None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT or img.mode in ("I", "F"):
        arr = np.asarray(img).astype(np.float32)
        # 16-bit data keeps its full range (Pillow's own convert would clip at 255). Mode "I"
        # (32-bit, which some 16-bit files open as) is scaled when it holds values over 255.
        if img.mode in _SIXTEEN_BIT or (img.mode == "I" and arr.max(initial=0) > 255):
            arr /= 257.0
        gray = np.clip(arr, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")  # L, P, 1, CMYK, YCbCr, LAB, HSV


def _open(data: bytes, formats: Iterable[str], max_pixels: int) -> Image.Image:
    allowed = tuple(formats)
    fmt = sniff_format(data)
    if fmt is None or fmt not in allowed:
        names = ", ".join(allowed)
        raise UnsupportedImage(
            f"unsupported image format: expected {names}" if data else "empty body: no image"
        )
    try:
        img = Image.open(io.BytesIO(data), formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"image exceeds the limit of {max_pixels} pixels") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImage(f"corrupt or truncated {fmt} image") from exc
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    if width == 0 or height == 0:
        raise CorruptImage("image has no pixels")
    return img


def decode_image(data: bytes, *, max_pixels: int, formats: Iterable[str] = SUPPORTED_FORMATS) -> DecodedImage:
    """Decode and check one image; raises a :class:`DecodeError` subclass on bad input."""
    start = time.perf_counter()
    img = _open(data, formats, max_pixels)
    try:
        img.load()
        try:
            ImageOps.exif_transpose(img, in_place=True)
        except Exception as exc:  # a broken EXIF block should not cost the whole image
            log.debug("ignoring unreadable EXIF orientation: %r", exc)
        rgb = np.array(to_rgb(img))  # a writable copy that torch can own
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptImage(f"corrupt or truncated {img.format or 'image'} data") from exc
    finally:
        img.close()
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)
    return DecodedImage(tensor=tensor, decode_ms=(time.perf_counter() - start) * 1000.0)
