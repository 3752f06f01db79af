"""Batched augmentation on the training device.

Whole batches are warped in one ``affine_grid``/``grid_sample`` call, so the
augmentation costs a few ms per batch on a GPU and is small next to the model
on a CPU, with no per-image Python loop and no DataLoader workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.1
    hflip: bool = True
    brightness: float = 0.2
    contrast: float = 0.2
    erase_p: float = 0.5
    erase_area: tuple[float, float] = (0.02, 0.2)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None) -> torch.Tensor:
    """x: (N, 1, S, S) float in [0, 1] -> augmented copy, same shape and range."""
    n, _, h, w = x.shape
    dev = x.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, device=dev, generator=gen)

    angle = (rand(n) * 2 - 1) * math.radians(cfg.rotate_deg)
    scale = cfg.scale[0] + rand(n) * (cfg.scale[1] - cfg.scale[0])
    flip = torch.where(rand(n) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(n, device=dev)
    tx, ty = ((rand(2, n) * 2 - 1) * cfg.translate * 2).unbind(0)  # affine_grid spans [-1, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    b = 1 + (rand(n, 1, 1, 1) * 2 - 1) * cfg.brightness
    c = 1 + (rand(n, 1, 1, 1) * 2 - 1) * cfg.contrast
    mean = out.mean(dim=(2, 3), keepdim=True)
    out = ((out - mean) * c + mean) * b

    if cfg.erase_p > 0:
        area = cfg.erase_area[0] + rand(n) * (cfg.erase_area[1] - cfg.erase_area[0])
        aspect = torch.exp((rand(n) * 2 - 1) * math.log(3.0))
        eh = (torch.sqrt(area * aspect) * h).clamp(1, h)
        ew = (torch.sqrt(area / aspect) * w).clamp(1, w)
        y0 = rand(n) * (h - eh)
        x0 = rand(n) * (w - ew)
        ys = torch.arange(h, device=dev).view(1, h, 1)
        xs = torch.arange(w, device=dev).view(1, 1, w)
        box = (
            (ys >= y0.view(n, 1, 1))
            & (ys < (y0 + eh).view(n, 1, 1))
            & (xs >= x0.view(n, 1, 1))
            & (xs < (x0 + ew).view(n, 1, 1))
        )
        box &= (rand(n) < cfg.erase_p).view(n, 1, 1)
        out = torch.where(box.unsqueeze(1), rand(n, 1, h, w), out)
    return out.clamp_(0.0, 1.0)
