"""The single definition of classifier input normalisation.

Training, evaluation and the server all call :func:`normalize`, so a change of
mean/std (recorded in the checkpoint) cannot make them disagree.
"""

from __future__ import annotations

import torch


def normalize(gray_u8: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """(N, 1, S, S) uint8 or [0, 255] float -> float32 standardised input."""
    return (gray_u8.float() / 255.0 - mean) / std


def rgb_to_gray(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) with ITU-R BT.601 weights, as PIL's "L" and FER2013 use."""
    w = torch.tensor([0.299, 0.587, 0.114], device=rgb.device, dtype=torch.float32).view(1, 3, 1, 1)
    return (rgb.float() * w).sum(dim=1, keepdim=True)
