"""Detector boxes -> classifier inputs: the eval-time framing preset.

FER2013 faces are tight-ish square grayscale crops; a detector box is a different
framing of the same face. :class:`~server.model.checkpoint.CropSpec` (stored in the
checkpoint) says how to turn one into the other, and this module is its only
implementation, so the server and any evaluation of detected faces agree.

Sampling is one :func:`torchvision.ops.roi_align` call per distinct image size (not a
per-face loop of resizes), with adaptive sampling so large faces are averaged down
like an area resize rather than aliased. Parts of a crop that fall outside the image
read as 0 (black): roi_align's own rule, which also keeps batched and single-image
results identical.
"""

from __future__ import annotations

import torch
from torchvision.ops import roi_align

from server.model.checkpoint import CropSpec
from server.pipeline.preprocess import rgb_to_gray

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
    if not out.shape[0]:
        return out
    offsets = torch.tensor([0, *counts]).cumsum(0).tolist()
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (img, k) in enumerate(zip(images, counts, strict=True)):
        if img.ndim != 3 or img.shape[0] not in (1, 3):
            raise ValueError(f"expected (3, H, W) RGB images, got {tuple(img.shape)}")
        if k:
            groups.setdefault(tuple(img.shape), []).append(i)
    for members in groups.values():
        batch = torch.stack([images[i].to(device) for i in members])
        gray = rgb_to_gray(batch) if batch.shape[1] == 3 else batch.float()
        rois = torch.cat(
            [
                torch.cat(
                    [
                        torch.full((counts[i], 1), float(j), device=device),
                        crop_regions(boxes[i].to(device), spec),
                    ],
                    1,
                )
                for j, i in enumerate(members)
            ]
        )
        crops = roi_align(
            gray, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True
        )
        dest = torch.cat([torch.arange(offsets[i], offsets[i + 1], device=device) for i in members])
        out[dest] = crops
    return out


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
