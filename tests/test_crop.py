"""Face crops: geometry against hand-computed crops of synthetic images, batching, whole-image path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from server.model.checkpoint import CropSpec
from server.pipeline.crop import WHOLE_IMAGE, crop_faces, crop_regions, crop_whole_images

H, W = 60, 100


def spec(margin: float = 0.2, square: bool = True, y_shift: float = 0.0) -> CropSpec:
    return CropSpec(margin=margin, square=square, y_shift=y_shift)


def gradient() -> torch.Tensor:
    """Grey image whose pixel (x, y) is x + 2y: bilinear filtering of it is exact away from the image
    edges (the filter is symmetric), so expected crops can be written down by hand."""
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    return (xs + 2 * ys).to(torch.uint8).expand(3, -1, -1).contiguous()


def expected_gradient_crop(region: list[float], size: int) -> torch.Tensor:
    """Value at each output pixel's centre; pixel i covers [i, i + 1), so its centre is i + 0.5."""
    x1, y1, x2, y2 = region
    j = torch.arange(size, dtype=torch.float64) + 0.5
    xs = x1 + j * (x2 - x1) / size - 0.5
    ys = y1 + j * (y2 - y1) / size - 0.5
    return (xs.view(1, -1) + 2 * ys.view(-1, 1)).float()


def test_regions_by_hand() -> None:
    box = torch.tensor([[30.0, 20.0, 50.0, 36.0]])  # 20 wide, 16 high, centre (40, 28)
    # square: side 20; shift 0.05 * 20 = 1 down; margin 0.1 * 20 = 2 each side -> side 24
    assert crop_regions(box, spec(margin=0.1, y_shift=0.05)).tolist() == [[28.0, 17.0, 52.0, 41.0]]
    assert crop_regions(box, spec(margin=0.0)).tolist() == [[30.0, 18.0, 50.0, 38.0]]
    # not square: 20 x 16 grow by 25% of each side on each side -> 30 x 24; shift -0.25 * 16 = -4
    assert crop_regions(box, spec(margin=0.25, square=False, y_shift=-0.25)).tolist() == [
        [25.0, 12.0, 55.0, 36.0]
    ]


FRAMINGS = [spec(margin=0.0), spec(margin=0.1, y_shift=0.05), spec(margin=0.25, square=False, y_shift=-0.1)]


@pytest.mark.parametrize("crop_spec", FRAMINGS)
def test_enlarged_crop_matches_hand_computed(crop_spec: CropSpec) -> None:
    """Enlarging is plain bilinear interpolation, exact on a gradient: values at output pixel centres."""
    box = torch.tensor([[30.0, 20.0, 50.0, 36.0]])
    region = crop_regions(box, crop_spec)[0].tolist()
    crop = crop_faces([gradient()], [box], crop_spec, 48)
    assert crop.shape == (1, 1, 48, 48) and crop.dtype == torch.float32
    assert torch.allclose(crop[0, 0], expected_gradient_crop(region, 48), atol=1e-3)


@pytest.mark.parametrize("crop_spec", FRAMINGS)
@pytest.mark.parametrize("size", [8, 48])
def test_crop_matches_pil_resize_of_the_region(crop_spec: CropSpec, size: int) -> None:
    """Shrinking filters like PIL's bilinear resize (the training path), to PIL's rounding."""
    rng = np.random.default_rng(size)
    gray = rng.integers(0, 256, (H, W), dtype=np.uint8)
    box = torch.tensor([[30.0, 20.0, 50.0, 36.0]])
    region = tuple(crop_regions(box, crop_spec)[0].tolist())
    crop = crop_faces([torch.from_numpy(gray)[None].expand(3, -1, -1)], [box], crop_spec, size)
    want = np.array(Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR, box=region))
    assert np.abs(crop[0, 0].numpy() - want).max() <= 1.001


def test_marker_lands_where_the_margin_puts_it() -> None:
    img = torch.zeros((3, 100, 120), dtype=torch.uint8)
    img[:, 30:70, 40:80] = 255  # a 40x40 white square = the "face"
    box = torch.tensor([[40.0, 30.0, 80.0, 70.0]])
    # Shrinking by 2 (4 below) filters over 2 (4) source pixels each side: one output pixel at the
    # square's edge mixes in the black around it, as PIL's resize (the training path) does.
    tight = crop_faces([img], [box], spec(margin=0.0), 20)[0, 0]
    assert torch.allclose(tight[1:-1, 1:-1], torch.tensor(255.0), atol=1e-3)
    assert 200 < tight[0, 10] < 255
    # margin 0.5: the crop is 80 px wide, the square its central 40 px = output pixels 5..14
    wide = crop_faces([img], [box], spec(margin=0.5), 20)[0, 0]
    assert torch.allclose(wide[6:14, 6:14], torch.tensor(255.0), atol=1e-3)
    assert wide[:4].abs().max() < 1e-3 and wide[16:].abs().max() < 1e-3
    assert wide[:, :4].abs().max() < 1e-3 and wide[:, 16:].abs().max() < 1e-3
    # y_shift 0.25 moves the crop centre 10 px down: the square appears 10/80*20 = 2.5 px higher
    shifted = crop_faces([img], [box], spec(margin=0.5, y_shift=0.25), 20)[0, 0]
    assert torch.allclose(shifted[3:12, 6:14], torch.tensor(255.0), atol=1e-3)
    assert shifted[13:].abs().max() < 1e-3


def test_outside_the_image_reads_zero() -> None:
    img = torch.full((3, 50, 50), 200, dtype=torch.uint8)
    box = torch.tensor([[0.0, 0.0, 20.0, 20.0]])  # margin 0.5 -> region (-10, -10, 30, 30)
    crop = crop_faces([img], [box], spec(margin=0.5), 40)[0, 0]
    assert crop[:8, :].abs().max() < 1e-3 and crop[:, :8].abs().max() < 1e-3
    assert torch.allclose(crop[12:, 12:], torch.tensor(200.0), atol=1e-3)


def test_bt601_gray_as_pil() -> None:
    """Grey levels are PIL's "L" exactly (what training reads), e.g. pure red is 76, not 76.245."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (7, 7, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    img = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    crop = crop_faces([img], [torch.tensor([[0.0, 0.0, 7.0, 7.0]])], spec(margin=0.0), 7)[0, 0]
    want = np.array(Image.fromarray(rgb).convert("L"))
    assert want[0, 0] == 76 and torch.equal(crop, torch.from_numpy(want).float())


def test_batch_order_sizes_and_empty() -> None:
    rng = np.random.default_rng(0)
    images = [
        torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8))
        for h, w in [(60, 80), (90, 70), (60, 80)]
    ]
    boxes = [
        torch.tensor([[10.0, 10.0, 40.0, 50.0], [5.0, 5.0, 20.0, 20.0]]),
        torch.zeros((0, 4)),
        torch.tensor([[30.0, 20.0, 70.0, 55.0]]),
    ]
    framing = spec(margin=0.2, y_shift=0.1)
    batched = crop_faces(images, boxes, framing, 48)
    assert batched.shape == (3, 1, 48, 48)
    singles = torch.cat([crop_faces([img], [b], framing, 48) for img, b in zip(images, boxes, strict=True)])
    assert torch.equal(batched, singles)
    assert crop_faces(images, [torch.zeros((0, 4))] * 3, framing, 48).shape == (0, 1, 48, 48)
    with pytest.raises(ValueError):
        crop_faces(images, boxes[:2], framing, 48)


def test_whole_image_path() -> None:
    face = torch.randint(0, 256, (1, 48, 48), dtype=torch.uint8)
    same = crop_whole_images([face.expand(3, -1, -1).contiguous()], 48)
    assert torch.allclose(same[0], face.float(), atol=1e-3)  # a FER2013-sized face is untouched
    assert WHOLE_IMAGE.margin == 0.0 and WHOLE_IMAGE.y_shift == 0.0
    # A non-square image is stretched over the whole output, not padded, as PIL resizes it.
    stretched = crop_whole_images([gradient()], 10)[0, 0]
    pil = Image.fromarray(gradient()[0].numpy()).resize((10, 10), Image.Resampling.BILINEAR)
    assert (stretched - torch.from_numpy(np.array(pil)).float()).abs().max() <= 1.001


def test_detect_then_crop(astronaut: np.ndarray) -> None:
    from server.pipeline.detect import build_detector

    img = torch.from_numpy(astronaut).permute(2, 0, 1).contiguous()
    dets = build_detector().detect([img])
    crops = crop_faces([img], [d.boxes for d in dets], spec(), 48)
    assert crops.shape == (1, 1, 48, 48)
    assert 20 < crops.mean() < 235 and crops.std() > 10  # a real face, not padding
