"""Decoding work bounded by what the pipeline needs (issue 15, items 3, 4 and 10): scan counts,
aspect ratios, reduced-scale decoding, crops without full-size float copies, and library
warnings that reach the log rate-limited (a real ``emotion-server`` process)."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from server_harness import encode

from server.model.checkpoint import CropSpec
from server.pipeline.crop import crop_faces, crop_whole_images
from server.pipeline.decode import ImageTooComplex, InvalidImageShape, decode_image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from hardening import exif_bomb_jpeg, many_scan_jpeg
from serverproc import ServerProcess

LIMIT = 40_000_000


def test_scan_count_is_limited_by_the_pixels_it_multiplies() -> None:
    small_many = many_scan_jpeg(320, 240, 200)  # 0.08 MP x 210 scans: cheap, allowed
    assert decode_image(small_many, max_pixels=LIMIT).width == 320
    with pytest.raises(ImageTooComplex, match="scans"):
        decode_image(many_scan_jpeg(4000, 3000, 100), max_pixels=LIMIT)  # 12 MP x 110 scans
    start = time.perf_counter()
    with pytest.raises(ImageTooComplex):
        decode_image(many_scan_jpeg(320, 240, 5000), max_pixels=LIMIT)  # any image: at most 256 scans
    assert time.perf_counter() - start < 0.5


def test_extreme_aspect_ratios_are_refused_from_the_header() -> None:
    with pytest.raises(InvalidImageShape, match="aspect"):
        decode_image(encode(np.zeros((1, 4000, 3), np.uint8), "PNG"), max_pixels=LIMIT)
    assert decode_image(encode(np.zeros((10, 400, 3), np.uint8), "PNG"), max_pixels=LIMIT).width == 400


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_large_images_are_decoded_at_the_working_size(fmt: str) -> None:
    img = np.zeros((4500, 6000, 3), np.uint8)
    img[1000:2000, 2000:3000] = 255
    out = decode_image(encode(img, fmt), max_pixels=LIMIT, work_size=(1200, 1200))
    h, w = out.tensor.shape[1:]
    # Reduced by the same factor both ways (crops are square in the tensor's pixels: a tensor reduced
    # 4x by 2x squashed every face), each side still >= 1200, and no further halving possible.
    assert 1200 <= min(w, h) < 2400, (w, h)
    assert (out.width, out.height) == (6000, 4500)  # what the client sent
    assert out.scale == pytest.approx((6000 / w, 4500 / h))
    assert out.scale[0] == pytest.approx(out.scale[1]) and out.scale[0] > 1
    small = decode_image(encode(img[:900, :1200], fmt), max_pixels=LIMIT, work_size=(1200, 1200))
    assert small.tensor.shape[1:] == (900, 1200) and small.scale == (1.0, 1.0)


def test_exif_rotation_applies_to_the_working_size_and_the_reported_size() -> None:
    img = np.zeros((3000, 5000, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: upright it is 3000 wide, 5000 high
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", exif=exif.tobytes())
    out = decode_image(buf.getvalue(), max_pixels=LIMIT, work_size=(1200, 1200))
    assert (out.width, out.height) == (3000, 5000)
    # DCT-scaled by 2 (2500x1500 stored), turned upright (1500x2500); halving it again would leave
    # 750 px across, and a reduction in height only would squash its faces
    assert tuple(out.tensor.shape[1:]) == (2500, 1500) and out.scale == (2.0, 2.0)


def test_crops_of_huge_regions_never_copy_the_image_as_floats(monkeypatch: pytest.MonkeyPatch) -> None:
    """The crop converts at most CHUNK_PIXELS source pixels to float at a time, however large the face."""
    import server.pipeline.crop as crop_module

    seen: list[tuple[int, ...]] = []
    real = crop_module.rgb_to_gray_np  # the CPU's grey conversion

    def spy(rgb: np.ndarray) -> np.ndarray:
        seen.append(tuple(rgb.shape))
        return real(rgb)

    monkeypatch.setattr(crop_module, "rgb_to_gray_np", spy)
    image = torch.zeros((3, 3000, 4000), dtype=torch.uint8)
    image[:, 500:2500, 1000:3000] = 200
    out = crop_whole_images([image], 48)
    boxes = torch.tensor([[1000.0, 500.0, 3000.0, 2500.0]])
    faces = crop_faces([image], [boxes], CropSpec(margin=0.0, square=True, y_shift=0.0), 48)
    assert out.shape == (1, 1, 48, 48) and faces.shape == (1, 1, 48, 48)
    assert seen and all(s[-1] * s[-2] <= crop_module.CHUNK_PIXELS for s in seen), seen
    inner = faces[0, 0, 1:-1, 1:-1]  # the edge pixels mix in the black around the box, as PIL's would
    assert inner.min() > 195 and inner.max() < 205  # the region is 200 grey everywhere


def test_chunked_crops_equal_one_pass(astronaut: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """Converting a region a few rows at a time gives what converting it at once gives."""
    import server.pipeline.crop as crop_module

    image = torch.from_numpy(astronaut).permute(2, 0, 1)
    boxes = torch.tensor([[170.0, 20.0, 310.0, 200.0], [-30.0, 400.0, 90.0, 530.0]])
    spec = CropSpec(margin=0.1, square=True, y_shift=0.05)
    whole = crop_faces([image], [boxes], spec, 48)
    monkeypatch.setattr(crop_module, "CHUNK_PIXELS", 1000)  # a few rows per step
    assert (crop_faces([image], [boxes], spec, 48) - whole).abs().max() < 1e-3


# ----------------------------------------------------------------------------- 10. warnings


@pytest.mark.slow
def test_library_warnings_reach_the_log_rate_limited(tiny_checkpoint: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    data = exif_bomb_jpeg()
    env = {"EMOTION_CHECKPOINT": str(tiny_checkpoint), "EMOTION_WARMUP": "false"}
    with ServerProcess(env=env, log_path=log) as server:
        before = len(log.read_text().splitlines())
        for _ in range(3):
            resp = httpx.post(server.url + "/v1/predict", content=data, timeout=30)
            assert resp.status_code == 200
        lines = log.read_text().splitlines()[before:]
    warnings = [line for line in lines if "Skipping tag" in line or "suppressed" in line]
    assert warnings, "the warnings are not in the log at all"
    assert len(lines) < 30, f"{len(lines)} log lines for 3 requests:\n" + "\n".join(lines[:5])
