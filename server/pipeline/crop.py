"""Detector boxes -> classifier inputs: the eval-time framing preset and the resize.

FER2013 faces are tight-ish square grayscale crops; a detector box is a different
framing of the same face. :class:`~server.model.checkpoint.CropSpec` (stored in the
checkpoint) says how to turn one into the other, and this module is its only
implementation, so the server and any evaluation of detected faces agree.

The resize is the one training uses (``training/data.py``: PIL's "L" then its bilinear
resize, a triangle filter widened by the scale factor, so large faces are averaged down
rather than aliased), written as two small weight matrices so it runs on tensors on any
device and can start at any sub-pixel region. The classifier thus sees the same
interpolation it was trained on; tests/test_preprocess_agreement.py pins the agreement
with PIL (and with evaluation's ``F.interpolate``) to one grey level on real faces. Like
PIL at an image edge, taps that fall outside the image are left out and the rest
renormalised; output pixels with no tap inside the image read as 0 (black).

Memory is bounded by the crop, not the image: a face region is converted to float a slice
of rows at a time (at most ``CHUNK_PIXELS`` source pixels) and reduced along x at once, so
no float copy of the image or of a huge region exists. A 36 MP image classified whole cost
1.6 GB of float copies and sampling buffers with whole-region sampling.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from server.model.checkpoint import CropSpec
from server.pipeline.preprocess import rgb_to_gray, rgb_to_gray_np

#: Source pixels converted to float at a time while cropping one face.
CHUNK_PIXELS = 1 << 18

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


def resize_weights(lo: float, hi: float, limit: int, size: int) -> tuple[int, np.ndarray]:
    """PIL's bilinear resize of ``[lo, hi]`` (pixel ``i`` spans ``[i, i + 1)``) of an axis of ``limit``
    pixels to ``size``: the first source pixel read and the (size, n) float32 weights of pixels
    ``first..+n``. In numpy: these are a few hundred numbers, where torch's per-op overhead made
    the weights ~0.2 ms of a ~0.5 ms crop.

    PIL's ``precompute_coeffs``: output pixel ``j`` is centred at ``lo + (j + 0.5) * scale`` and
    weighs source pixel ``i`` by ``max(0, 1 - |i + 0.5 - centre| / max(scale, 1))``, over pixels
    inside the axis, normalised to sum 1 (0 where none is inside).
    """
    scale = (hi - lo) / size
    support = max(scale, 1.0)
    first = min(max(math.floor(lo - support), 0), limit - 1)
    last = min(max(math.ceil(hi + support), first + 1), limit)
    centres = lo + (np.arange(size, dtype=np.float64) + 0.5) * scale
    pixels = np.arange(first, last, dtype=np.float64) + 0.5
    weights = np.maximum(1.0 - np.abs(pixels[None, :] - centres[:, None]) / support, 0.0)
    total = weights.sum(1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    return first, weights.astype(np.float32)


def _gray(pixels: torch.Tensor) -> torch.Tensor:
    """(C, H, W) uint8 RGB or grey -> (H, W) float32 grey levels; on the CPU in numpy (the same
    integers, at a third of torch's time on a face's window: its per-op overhead dominates there)."""
    if pixels.device.type == "cpu":
        arr = pixels.numpy()
        return torch.from_numpy(rgb_to_gray_np(arr) if len(arr) == 3 else arr[0].astype(np.float32))
    return rgb_to_gray(pixels[None])[0, 0] if pixels.shape[0] == 3 else pixels[0].float()


def _crop_one(img: torch.Tensor, region: list[float], size: int) -> torch.Tensor:
    """(1, size, size) gray crop of ``region`` (x1, y1, x2, y2, may extend past the image)."""
    _, h, w = img.shape
    x1, y1, x2, y2 = region
    left, wx_np = resize_weights(x1, x2, w, size)
    top, wy_np = resize_weights(y1, y2, h, size)
    wx, wy = torch.from_numpy(wx_np).to(img.device), torch.from_numpy(wy_np).to(img.device)
    window = img[:, top : top + wy.shape[1], left : left + wx.shape[1]]
    rows = max(1, CHUNK_PIXELS // window.shape[2])
    across = torch.cat(
        [_gray(window[:, r : r + rows]) @ wx.T for r in range(0, window.shape[1], rows)]
    )  # (window rows, size)
    return (wy @ across)[None]


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
