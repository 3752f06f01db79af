"""Bytes -> upright RGB tensor, with the size checks done before the expensive part.

The format is sniffed from the bytes (clients' Content-Type headers are unreliable)
and the pixel count is read from the header, so a small file that claims to be a
gigapixel image is refused before any pixel is decoded. EXIF orientation is
applied, so boxes refer to the image as people see it. Runs in a worker thread.

The work an image may cost is bounded, not only its pixel count:

* a progressive JPEG costs about pixels x scans to decode, and scans can be repeated at will
  (a 0.5 MB, 40 MP file with 4,000 scans took 12.7 s); the scans are counted from the markers
  and refused past ``JPEG_SCAN_BUDGET`` scan-pixels (at most ``MAX_JPEG_SCANS``);
* an aspect ratio past ``MAX_ASPECT_RATIO`` holds no face and made later stages allocate for
  a box millions of pixels long: refused from the header;
* an image larger than the pipeline needs (``work_size``: each side a few times the detector's
  input) is decoded smaller, a JPEG by libjpeg's DCT scaling (``Image.draft``, which also makes
  it faster), other formats by a box filter right after decoding. :class:`DecodedImage` keeps
  the size the client sent, and ``scale`` maps boxes found in the tensor back to it.

Pillow reads every header (format, size, mode, EXIF) and decodes every image, except the
commonest one: a whole colour or grey JPEG needed at full size (a webcam frame, most photos),
which simplejpeg decodes to the same pixels in about half the time (:func:`_decode_jpeg`).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import simplejpeg
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
#: Progressive decoding costs about (pixels x scans); ~1 s on one busy core at this budget.
JPEG_SCAN_BUDGET = 1_000_000_000
#: Never more scans than this, however small the image (ordinary progressive files have ~10).
MAX_JPEG_SCANS = 256
#: Wider or taller than this (e.g. 4000x1) holds no face; panoramas are ~10:1.
MAX_ASPECT_RATIO = 50.0
#: Modes Image.reduce averages as they are (others are converted to RGB first).
_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "I", "F"})
_SOS, _EOI = b"\xff\xda", b"\xff\xd9"
EXIF_ORIENTATION = 0x0112
#: EXIF orientation -> the (H, W, C) array operation that makes the image upright, as
#: ``ImageOps.exif_transpose`` does it (tests/test_decode.py checks all eight against it).
_EXIF_TURNS: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],  # mirrored
    3: lambda a: a[::-1, ::-1],  # upside down
    4: lambda a: a[::-1],  # mirrored upside down
    5: lambda a: a.transpose(1, 0, 2),  # transposed
    6: lambda a: np.rot90(a, -1),  # turned 90 degrees counter-clockwise: turn it clockwise
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # transposed the other way
    8: lambda a: np.rot90(a, 1),  # turned 90 degrees clockwise: turn it back
}
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI: markers without a length


class DecodeError(ValueError):
    """The bytes cannot become an image; ``code`` is the API error code."""

    code = "invalid_image"


class UnsupportedImage(DecodeError):
    code = "unsupported_media_type"


class CorruptImage(DecodeError):
    code = "invalid_image"


class ImageTooLarge(DecodeError):
    code = "image_too_large"


class ImageTooComplex(ImageTooLarge):
    """Within the pixel limit, but too much work to decode (a progressive JPEG's scans)."""

    code = "image_too_complex"


class InvalidImageShape(DecodeError):
    code = "invalid_image_shape"


@dataclass
class DecodedImage:
    """(3, h, w) uint8 RGB on the CPU, upright; ``decode_ms`` is what producing it cost.

    ``size`` is the upright (width, height) of the image as sent, which the tensor may be a
    reduction of (see ``work_size``); ``width``/``height`` report it, ``scale`` maps the
    tensor's pixels to it. ``None``: the tensor is the image at full size.
    """

    tensor: torch.Tensor
    decode_ms: float
    size: tuple[int, int] | None = None

    @property
    def height(self) -> int:
        return self.size[1] if self.size else int(self.tensor.shape[1])

    @property
    def width(self) -> int:
        return self.size[0] if self.size else int(self.tensor.shape[2])

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) factors from tensor pixels to the image's own pixels."""
        return (self.width / int(self.tensor.shape[2]), self.height / int(self.tensor.shape[1]))

    def in_tensor_pixels(self, boxes: torch.Tensor) -> torch.Tensor:
        """(N, 4) float boxes in the image's own pixels, in the tensor's (which may be reduced)."""
        sx, sy = self.scale
        return boxes / torch.tensor([sx, sy, sx, sy], device=boxes.device)


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


def _first_scan(data: bytes) -> int:
    """Where the first scan (SOS marker) of a JPEG starts, walking the marker segments to it (so
    an EXIF thumbnail's markers are skipped); -1 when none is found where one must be."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return -1  # not a marker where one must be: Pillow reports the corruption
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _STANDALONE:
            i += 2
        elif marker == 0xDA:
            return i
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return -1


def jpeg_scan_count(data: bytes) -> int:
    """Scans (SOS markers) of the first image in a JPEG, without decoding it.

    Counts SOS markers from the first scan up to the end of the image: in entropy-coded data a
    0xFF byte is always followed by 0x00 or a restart marker, so 0xFF 0xDA there is a scan.
    """
    i = _first_scan(data)
    if i < 0:
        return 0
    end = data.find(_EOI, i)
    return data.count(_SOS, i, len(data) if end < 0 else end)


def _jpeg_ends(data: bytes) -> bool:
    """Whether the image's end marker follows its scans (a truncated upload has none: Pillow's
    decoder refuses it, while libjpeg itself would pad the missing rows)."""
    i = _first_scan(data)
    return i >= 0 and data.find(_EOI, i) >= 0


def _check_work(data: bytes, fmt: str, width: int, height: int) -> None:
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise InvalidImageShape(
            f"image is {width}x{height}: an aspect ratio over {MAX_ASPECT_RATIO:g}:1 holds no face"
        )
    if fmt == "JPEG":
        allowed = min(MAX_JPEG_SCANS, max(1, JPEG_SCAN_BUDGET // (width * height)))
        scans = jpeg_scan_count(data)
        if scans > allowed:
            raise ImageTooComplex(
                f"JPEG has {scans} scans; at {width}x{height} the limit is {allowed} "
                "(progressive decoding costs pixels x scans)"
            )


def _reduction(size: tuple[int, int], work_size: tuple[int, int] | None) -> tuple[int, int]:
    """The integer factor, the same for both sides, that keeps each side at least ``work_size`` (1
    when one is smaller), as (x, y) for ``Image.reduce``. The same for both: face crops and the
    streams' region passes are square in the tensor's pixels, so a tensor reduced more along one
    side would give the classifier squashed faces (a 6000x4500 photo reduced 4x by 2x scored a
    happy face 0.68 where its 1200x900 copy scored 0.90)."""
    if work_size is None:
        return (1, 1)
    factor = max(1, min(size[0] // work_size[0], size[1] // work_size[1]))
    return (factor, factor)


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
    try:
        _check_work(data, fmt, width, height)
    except DecodeError:
        img.close()
        raise
    return img


def _whole_jpeg(img: Image.Image, data: bytes, work_size: tuple[int, int] | None) -> bool:
    """Whether ``img`` is a whole colour or grey JPEG decoded at full size (no DCT scaling or
    reduction, whichever way EXIF turns it): :func:`_decode_jpeg` then decodes it. Anything else
    (CMYK, truncated, large) takes Pillow's path."""
    if img.format != "JPEG" or img.mode not in ("RGB", "L") or not _jpeg_ends(data):
        return False
    if work_size is None:
        return True
    w, h = img.size
    reduced = _reduction((w, h), work_size) != (1, 1) or _reduction((h, w), work_size) != (1, 1)
    return min(w, h) // max(work_size) < 2 and not reduced


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8) that ``ImageOps.exif_transpose`` would apply; 1 when unreadable."""
    try:
        return int(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception as exc:  # a broken EXIF block should not cost the whole image
        log.debug("ignoring unreadable EXIF orientation: %r", exc)
        return 1


def _decode_jpeg(data: bytes, orientation: int) -> np.ndarray | None:
    """(H, W, 3) upright RGB: libjpeg-turbo through simplejpeg, Pillow's pixels in about half the
    time (it decodes straight into one array, where Pillow decodes in chunks and then copies the
    image out). Recoverable corruption decodes as Pillow decodes it, silently (``strict=False``:
    libjpeg's warnings would otherwise be errors); EXIF stays Pillow's to read (``orientation``).
    None where simplejpeg gives up: Pillow then decodes the image, or reports why it cannot."""
    try:
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False, strict=False)
    except ValueError as exc:
        log.debug("simplejpeg could not decode a JPEG, Pillow will: %s", exc)
        return None
    turn = _EXIF_TURNS.get(orientation)
    return rgb if turn is None else np.ascontiguousarray(turn(rgb))


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    formats: Iterable[str] = SUPPORTED_FORMATS,
    work_size: tuple[int, int] | None = None,
) -> DecodedImage:
    """Decode and check one image; raises a :class:`DecodeError` subclass on bad input.

    ``work_size`` (width, height): the smallest size the pipeline needs; a larger image is
    decoded reduced by integer factors that keep each side at least that long.
    """
    start = time.perf_counter()
    img = _open(data, formats, max_pixels)
    rgb = _decode_jpeg(data, _orientation(img)) if _whole_jpeg(img, data, work_size) else None
    if rgb is not None:
        img.close()
        tensor = torch.from_numpy(rgb).permute(2, 0, 1)
        return DecodedImage(tensor=tensor, decode_ms=(time.perf_counter() - start) * 1000.0)
    try:
        stored = img.size
        if img.format == "JPEG" and work_size is not None:
            # DCT scaling is uniform and happens before EXIF rotation: keep both sides long
            # enough whichever way the image turns out to be upright.
            factor = min(stored[0] // max(work_size), stored[1] // max(work_size))
            if factor >= 2:
                img.draft(img.mode, (stored[0] // factor, stored[1] // factor))
        decoded = img.size
        img.load()
        try:
            ImageOps.exif_transpose(img, in_place=True)
        except Exception as exc:  # a broken EXIF block should not cost the whole image
            log.debug("ignoring unreadable EXIF orientation: %r", exc)
        size = stored if img.size == decoded else stored[::-1]  # orientations 5-8 swap the sides
        fx, fy = _reduction(img.size, work_size)
        if (fx > 1 or fy > 1) and img.mode in _REDUCIBLE:
            reduced = img.reduce((fx, fy))  # a box filter, before any conversion copies the full image
            img.close()
            img = reduced
        upright = to_rgb(img)
        fx, fy = _reduction(upright.size, work_size)
        if fx > 1 or fy > 1:
            upright = upright.reduce((fx, fy))
        rgb = np.array(upright)  # a writable copy that torch can own
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptImage(f"corrupt or truncated {img.format or 'image'} data") from exc
    finally:
        img.close()
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)
    full = None if size == (tensor.shape[2], tensor.shape[1]) else size
    return DecodedImage(tensor=tensor, decode_ms=(time.perf_counter() - start) * 1000.0, size=full)
