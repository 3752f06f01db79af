"""OpenCV's ``PriorBox`` and ``DetectionOutput`` box arithmetic: priors, and offsets decoded against them."""

from __future__ import annotations

import torch

from server.pipeline.detect.specs import PriorSpec


def make_priors(
    specs: list[PriorSpec], feature_sizes: list[tuple[int, int]], image_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV ``PriorBox`` outputs: normalised (P, 4) corner boxes and (P, 4) variances."""
    img_h, img_w = image_hw
    boxes, variances = [], []
    for spec, (fh, fw) in zip(specs, feature_sizes, strict=True):
        sizes = torch.tensor(spec.box_sizes, dtype=torch.float32)  # (A, 2) as w, h
        # Computed in float32 like OpenCV, so boxes agree to the last bit where it matters.
        cy, cx = torch.meshgrid(
            (torch.arange(fh, dtype=torch.float32) + spec.offset) * spec.step,
            (torch.arange(fw, dtype=torch.float32) + spec.offset) * spec.step,
            indexing="ij",
        )
        cx, cy = cx.reshape(-1, 1), cy.reshape(-1, 1)
        half_w, half_h = sizes[:, 0] / 2, sizes[:, 1] / 2
        b = torch.stack(
            [(cx - half_w) / img_w, (cy - half_h) / img_h, (cx + half_w) / img_w, (cy + half_h) / img_h], -1
        )
        b = b.reshape(-1, 4)
        if spec.clip:
            b = b.clamp(0.0, 1.0)
        boxes.append(b)
        variances.append(torch.tensor(spec.variance, dtype=torch.float32).expand(b.shape[0], 4))
    return torch.cat(boxes), torch.cat(variances)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor, variances: torch.Tensor) -> torch.Tensor:
    """CENTER_SIZE decoding of (B, P, 4) offsets against (P, 4) priors.

    Normalised and unclipped, like OpenCV's output (``clip: false`` in the prototxt).
    """
    pw = priors[:, 2] - priors[:, 0]
    ph = priors[:, 3] - priors[:, 1]
    pcx = priors[:, 0] + pw * 0.5
    pcy = priors[:, 1] + ph * 0.5
    cx = variances[:, 0] * loc[..., 0] * pw + pcx
    cy = variances[:, 1] * loc[..., 1] * ph + pcy
    w = torch.exp(variances[:, 2] * loc[..., 2]) * pw
    h = torch.exp(variances[:, 3] * loc[..., 3]) * ph
    return torch.stack([cx - w * 0.5, cy - h * 0.5, cx + w * 0.5, cy + h * 0.5], -1)
