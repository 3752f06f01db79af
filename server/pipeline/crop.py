"""Detector boxes -> classifier inputs: the eval-time framing preset.

FER2013 faces are tight-ish square grayscale crops; a detector box is a different
framing of the same face. :class:`~server.model.checkpoint.CropSpec` (stored in the
checkpoint) says how to turn one into the other, and this module is its only
implementation, so the server and any evaluation of detected faces agree.

Sampling is :func:`torchvision.ops.roi_align` with adaptive sampling, so large faces
are averaged down like an area resize rather than aliased. Parts of a crop that fall
outside the image read as 0 (black): roi_align's own rule.

Memory is bounded by the crop, not the image: each face is sampled from a window of the
image just large enough for its region (converted to float alone, never the whole image),
and a window over ``MAX_OVERSAMPLE`` times the crop size per side is first box-averaged
down in uint8 steps, so neither the float copy nor roi_align's sampling buffer (about
32 bytes per source pixel) grows with the face. A 36 MP image classified whole cost 1.6 GB
of float copies and sampling buffers before.
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import roi_align

from server.model.checkpoint import CropSpec
from server.pipeline.preprocess import rgb_to_gray

#: A face region is sampled from at most this many source pixels per crop pixel and side.
MAX_OVERSAMPLE = 8

#: For images that already are a face crop (FER2013-style): the whole image, no
#: margin (it is in the image already), no shift, stretched if not square.
WHOLE_IMAGE = CropSpec(margin=0.0, square=False, y_shift=0.0)


def crop_regions(boxes: torch.Tensor, spec: CropSpec) -> torch.Tensor:
    """(K, 4) ``x1, y1, x2, y2`` detector boxes -> (K, 4) regions to sample, in the same pixels.

    With ``spec.square`` the box becomes a square of side ``s = max(w, h)`` around its
    centre. The centre moves down by ``spec.y_shift * s`` (up if negative), then
    ``spec.margin * s`` is added on every side, so the crop side is ``s * (1 + 2 * margin)``.
    Without ``square``, width and height are treated separately the same way.
    """
    boxes = boxes.float()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    cx = (boxes[:, 0] + boxes[:, 2]) * 0.5
    cy = (boxes[:, 1] + boxes[:, 3]) * 0.5
    if spec.square:
        w = h = torch.maximum(w, h)
    cy = cy + spec.y_shift * h
    half_w = w * (0.5 + spec.margin)
    half_h = h * (0.5 + spec.margin)
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], 1)


def crop_faces(
    images: list[torch.Tensor], boxes: list[torch.Tensor], spec: CropSpec, size: int
) -> torch.Tensor:
    """Grayscale face crops for the classifier.

    images: (3, H, W) uint8 RGB (sizes may differ); boxes: per image (K_i, 4) in its
    pixels (e.g. ``Detections.boxes``). Returns (sum K_i, 1, size, size) float32 in
    [0, 255], faces in image order then box order, on the images' device. Gray is
    BT.601 (:func:`~server.pipeline.preprocess.rgb_to_gray`), as FER2013 and PIL's "L".
    """
    if len(images) != len(boxes):
        raise ValueError(f"got {len(images)} images but {len(boxes)} box lists")
    device = images[0].device if images else torch.device("cpu")
    counts = [int(b.shape[0]) for b in boxes]
    out = torch.zeros((sum(counts), 1, size, size), dtype=torch.float32, device=device)
    k = 0
    for img, img_boxes in zip(images, boxes, strict=True):
        if img.ndim != 3 or img.shape[0] not in (1, 3):
            raise ValueError(f"expected (3, H, W) RGB images, got {tuple(img.shape)}")
        if not len(img_boxes):
            continue
        img = img.to(device)
        for region in crop_regions(img_boxes.to(device), spec).tolist():
            out[k] = _crop_one(img, region, size)
            k += 1
    return out


def _span(lo: float, hi: float, limit: int) -> tuple[int, int]:
    """Pixels ``[a, b)`` the bilinear samples of a region ``[lo, hi]`` read (aligned=True puts
    them in ``(lo - 0.5, hi - 0.5)``, each reading its floor and the next pixel), clipped."""
    a = min(max(math.floor(lo - 0.5), 0), limit - 1)
    b = min(max(math.floor(hi - 0.5) + 2, a + 1), limit)
    return a, b


def _cover(lo: float, hi: float, limit: int) -> tuple[int, int]:
    """Pixels ``[a, b)`` that a region ``[lo, hi]`` covers, clipped."""
    a = min(max(math.floor(lo), 0), limit - 1)
    return a, min(max(math.ceil(hi), a + 1), limit)


def _box_reduce(window: torch.Tensor, fy: int, fx: int) -> torch.Tensor:
    """(C, H, W) uint8 -> (C, H // fy, W // fx) float32 block means, without a full float copy."""
    c, h, w = window.shape
    oh, ow = max(h // fy, 1), max(w // fx, 1)
    acc = torch.zeros((c, oh, ow), dtype=torch.float32, device=window.device)
    for dy in range(min(fy, h)):
        for dx in range(min(fx, w)):
            acc += window[:, dy::fy, dx::fx][:, :oh, :ow]
    return acc / float(min(fy, h) * min(fx, w))


def _crop_one(img: torch.Tensor, region: list[float], size: int) -> torch.Tensor:
    """(1, size, size) gray crop of ``region`` (x1, y1, x2, y2, may extend past the image)."""
    _, h, w = img.shape
    x1, y1, x2, y2 = region
    left, right = _span(x1, x2, w)
    top, bottom = _span(y1, y2, h)
    limit = MAX_OVERSAMPLE * size
    fy = math.ceil((bottom - top) / limit)
    fx = math.ceil((right - left) / limit)
    if fx > 1 or fy > 1:  # blocks start where the region does, not half a pixel before it
        left, right = _cover(x1, x2, w)
        top, bottom = _cover(y1, y2, h)
    window = img[:, top:bottom, left:right]
    pixels = _box_reduce(window, fy, fx) if fx > 1 or fy > 1 else window.float()
    gray = rgb_to_gray(pixels[None]) if pixels.shape[0] == 3 else pixels[None]
    # Continuous coordinates (pixel i spans [i, i + 1)) scale with the blocks: block j spans [j, j + 1).
    roi = torch.tensor(
        [[0.0, (x1 - left) / fx, (y1 - top) / fy, (x2 - left) / fx, (y2 - top) / fy]], device=img.device
    )
    crop: torch.Tensor = roi_align(
        gray, roi, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True
    )
    return crop[0]


def whole_image_boxes(images: list[torch.Tensor]) -> list[torch.Tensor]:
    """One box per image covering all of it: for callers that skip detection."""
    return [
        torch.tensor([[0.0, 0.0, float(img.shape[-1]), float(img.shape[-2])]], device=img.device)
        for img in images
    ]


def crop_whole_images(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """Each image is one face already (a FER2013-style crop): resize it to ``size`` in gray.

    Uses :data:`WHOLE_IMAGE`, not the checkpoint's spec: the margin and shift describe how
    a *detector box* relates to a FER2013 face, and an image that is already framed like
    one must not get them again. A 48x48 image at ``size=48`` comes back unchanged.
    """
    return crop_faces(images, whole_image_boxes(images), WHOLE_IMAGE, size)
