"""The single definition of classifier input normalisation, and the server's grey conversion.

Training, evaluation and the server all call :func:`normalize`, so a change of
mean/std (recorded in the checkpoint) cannot make them disagree.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T", torch.Tensor, np.ndarray)


def normalize(gray_u8: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """(N, 1, S, S) uint8 or [0, 255] float -> float32 standardised input."""
    return (gray_u8.float() / 255.0 - mean) / std


def _bt601(r: T, g: T, b: T) -> T:
    """Whole grey levels from int32 channels (torch or numpy): ITU-R BT.601 in PIL's 16-bit fixed point."""
    gray: T = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
    return gray


def rgb_to_gray(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, 1, H, W) float32 whole grey levels: ITU-R BT.601 exactly as PIL's "L"
    computes it (``training/data.py`` trains on that), as does FER2013."""
    r, g, b = rgb.to(torch.int32).unbind(1)
    return _bt601(r, g, b).unsqueeze(1).float()


def rgb_to_gray_np(rgb: np.ndarray) -> np.ndarray:
    """:func:`rgb_to_gray` for one (3, H, W) uint8 array (any strides) -> (H, W) float32: the same
    integers, without torch's per-call overhead on the CPU's small face windows."""
    r, g, b = (c.astype(np.int32) for c in rgb)
    gray: np.ndarray = _bt601(r, g, b).astype(np.float32)
    return gray
