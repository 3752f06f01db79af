"""The images every detector accepts: (3, H, W) RGB or (1, H, W) grey uint8 tensors."""

from __future__ import annotations

import torch


def as_rgb(img: torch.Tensor) -> torch.Tensor:
    """``img`` as (3, H, W) (grey expanded, no copy); a clear error for anything else."""
    if (
        img.ndim != 3
        or img.shape[0] not in (1, 3)
        or img.dtype != torch.uint8
        or not img.shape[1] * img.shape[2]
    ):
        raise ValueError(f"expected a (3, H, W) uint8 RGB image tensor, got {tuple(img.shape)} {img.dtype}")
    return img.expand(3, -1, -1) if img.shape[0] == 1 else img
