"""server.pipeline.decode: formats, modes, EXIF, and the limits checked before decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
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


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_turned_as_pillow_turns_it(astronaut: np.ndarray, orientation: int) -> None:
    """JPEGs decoded at full size take OpenCV's decoder and numpy's turns; Pillow's exif_transpose
    is the reference for all eight orientations (a non-square crop, so a wrong turn shows)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(astronaut[:96, :160]).save(buf, "JPEG", exif=exif.tobytes(), quality=90)
    reference = np.array(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
    out = decode_image(buf.getvalue(), max_pixels=LIMIT)
    assert np.array_equal(out.tensor.permute(1, 2, 0).numpy(), reference)
    assert out.tensor.permute(1, 2, 0).is_contiguous()  # HWC memory, as every decode gives


@pytest.mark.parametrize("kind", ["colour", "grey", "progressive", "subsampled 4:4:4"])
def test_full_size_jpegs_decode_to_pillows_pixels(astronaut: np.ndarray, kind: str) -> None:
    """The faster JPEG decode gives Pillow's pixels exactly (both are libjpeg-turbo, same settings)."""
    img = Image.fromarray(astronaut)
    options: dict[str, object] = {"quality": 85}
    if kind == "grey":
        img = img.convert("L")
    elif kind == "progressive":
        options["progressive"] = True
    else:
        options["subsampling"] = 0
    buf = io.BytesIO()
    img.save(buf, "JPEG", **options)
    reference = np.array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    out = decode_image(buf.getvalue(), max_pixels=LIMIT)
    assert np.array_equal(out.tensor.permute(1, 2, 0).numpy(), reference)
    assert out.size is None and (out.width, out.height) == (astronaut.shape[1], astronaut.shape[0])


def test_damaged_jpegs_decode_as_pillow_decodes_them(
    astronaut_jpeg: bytes, capfd: pytest.CaptureFixture[str]
) -> None:
    """Flipped bits in the scan data decode (as Pillow decodes them) without a word on stderr, which
    a stream of damaged frames could otherwise flood; bytes after the end marker are ignored; an
    upload cut short, even by its last two bytes, is refused as corrupt."""
    sos = astronaut_jpeg.find(b"\xff\xda")
    damaged = bytearray(astronaut_jpeg)
    for k in range(5):
        damaged[sos + 2000 + 997 * k] ^= 0x5A
    reference = np.array(Image.open(io.BytesIO(bytes(damaged))).convert("RGB"))
    out = decode_image(bytes(damaged), max_pixels=LIMIT)
    assert np.array_equal(out.tensor.permute(1, 2, 0).numpy(), reference)
    assert capfd.readouterr().err == ""
    trailing = decode_image(astronaut_jpeg + b"\0" * 64 + b"junk", max_pixels=LIMIT)
    assert np.array_equal(
        trailing.tensor.numpy(), decode_image(astronaut_jpeg, max_pixels=LIMIT).tensor.numpy()
    )
    with pytest.raises(CorruptImage):
        decode_image(astronaut_jpeg[:-2], max_pixels=LIMIT)


def test_a_jpeg_simplejpeg_gives_up_on_is_left_to_pillow(
    astronaut_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """simplejpeg is only the fast path: where it raises (a JPEG feature its build lacks, say),
    Pillow decodes the image, so the answer never depends on which decoder took it."""
    import simplejpeg

    expected = decode_image(astronaut_jpeg, max_pixels=LIMIT).tensor

    def refuse(*args: object, **kwargs: object) -> None:
        raise ValueError("unsupported JPEG process")

    monkeypatch.setattr(simplejpeg, "decode_jpeg", refuse)
    assert torch.equal(decode_image(astronaut_jpeg, max_pixels=LIMIT).tensor, expected)


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
