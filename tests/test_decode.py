"""server.pipeline.decode: formats, modes, EXIF, and the limits checked before decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from server_harness import encode, jpeg_claiming, png_claiming

from server.pipeline.decode import CorruptImage, ImageTooLarge, UnsupportedImage, decode_image, sniff_format

LIMIT = 40_000_000


def test_formats_are_sniffed_from_bytes(astronaut: np.ndarray) -> None:
    for fmt in ("JPEG", "PNG", "WEBP"):
        data = encode(astronaut, fmt)
        assert sniff_format(data) == fmt
        img = decode_image(data, max_pixels=LIMIT)
        assert img.tensor.shape == (3, 512, 512) and img.tensor.dtype.is_floating_point is False
        assert (img.width, img.height) == (512, 512)
    assert sniff_format(b"GIF89a....") is None


def test_lossless_pixels_survive(astronaut: np.ndarray) -> None:
    img = decode_image(encode(astronaut, "PNG"), max_pixels=LIMIT)
    assert np.array_equal(img.tensor.permute(1, 2, 0).numpy(), astronaut)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16"])
def test_modes_become_rgb(astronaut: np.ndarray, mode: str) -> None:
    base = Image.fromarray(astronaut)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)
        assert img.mode == "I;16"
    else:
        img = base.convert(mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG" if mode == "CMYK" else "PNG")
    out = decode_image(buf.getvalue(), max_pixels=LIMIT).tensor
    assert out.shape == (3, 512, 512)
    gray = np.asarray(base.convert("L"), dtype=np.float64)
    # Every mode keeps the picture: brightness tracks the original (16-bit is scaled, not clipped).
    assert abs(out.float().mean().item() - gray.mean()) < 25


def test_transparent_pixels_become_white() -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent black
    out = decode_image(encode(rgba, "PNG"), max_pixels=LIMIT).tensor
    assert int(out.min()) == 255


def test_exif_orientation_is_applied() -> None:
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    out = decode_image(buf.getvalue(), max_pixels=LIMIT)
    assert (out.width, out.height) == (20, 40)  # upright: tall
    top, bottom = out.tensor[:, :20].float().mean(), out.tensor[:, 20:].float().mean()
    assert top > 200 and bottom < 50  # the white left half is now on top


def test_pixel_limit_is_checked_from_the_header() -> None:
    with pytest.raises(ImageTooLarge):
        decode_image(jpeg_claiming(9000, 9000), max_pixels=LIMIT)  # 81 MP, below Pillow's own bomb check
    with pytest.raises(ImageTooLarge):
        decode_image(png_claiming(20000, 20000), max_pixels=LIMIT)  # 400 MP: Pillow's bomb error path
    with pytest.raises(ImageTooLarge):
        decode_image(encode(np.zeros((100, 100, 3), np.uint8), "PNG"), max_pixels=99 * 100)


def test_unsupported_and_corrupt(astronaut_jpeg: bytes) -> None:
    with pytest.raises(UnsupportedImage):
        decode_image(b"hello world", max_pixels=LIMIT)
    with pytest.raises(UnsupportedImage):
        decode_image(b"", max_pixels=LIMIT)
    with pytest.raises(UnsupportedImage):
        decode_image(encode(np.zeros((8, 8, 3), np.uint8), "GIF"), max_pixels=LIMIT)
    with pytest.raises(UnsupportedImage):  # the stream accepts JPEG only
        decode_image(encode(np.zeros((8, 8, 3), np.uint8), "PNG"), max_pixels=LIMIT, formats=("JPEG",))
    with pytest.raises(CorruptImage):
        decode_image(astronaut_jpeg[: len(astronaut_jpeg) // 2], max_pixels=LIMIT)
    with pytest.raises(CorruptImage):
        decode_image(b"\x89PNG\r\n\x1a\n" + b"\0" * 100, max_pixels=LIMIT)
