"""``cv2.resize(..., INTER_LINEAR)`` ported to torch bit for bit, for batches on any device.

The SSD's weaker outputs move with single grey-level differences in its input, so a
resize that is merely close (``F.interpolate``) would break parity with ``cv2.dnn``.
"""

from __future__ import annotations

import functools

import torch

_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS


def _linear_taps(src: int, dst: int, clamp_coeffs: bool) -> tuple[torch.Tensor, ...]:
    """OpenCV's fixed-point bilinear taps: (index0, index1, weight0, weight1) per output pixel.

    ``clamp_coeffs`` is the horizontal rule (out-of-range taps become weight 2048 on the
    edge pixel); vertically OpenCV only clamps the row indices.
    """
    f = ((torch.arange(dst, dtype=torch.float64) + 0.5) * (src / dst) - 0.5).float()
    s = torch.floor(f)
    f = f - s
    i = s.long()
    if clamp_coeffs:
        f = torch.where((i < 0) | (i >= src - 1), torch.zeros_like(f), f)
        i = i.clamp(0, src - 1)
    one = 1 << _COEF_BITS
    w0 = torch.round((1 - f) * one).int()  # cvRound: half to even, like torch.round
    w1 = torch.round(f * one).int()
    return i.clamp(0, src - 1), (i + 1).clamp(0, src - 1), w0, w1


def cv2_resize_linear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``cv2.resize(img, size, interpolation=INTER_LINEAR)`` for (B, C, H, W) uint8, bit-exact.

    Reproduces OpenCV's 11-bit fixed-point coefficients, its SIMD vertical pass
    rounding, and its switch to INTER_AREA for exact 2x downscales (x86 builds of
    opencv-python 4.x; checked against 4.14 in the tests). ``size`` is (width, height).
    """
    _, _, h, w = x.shape
    dw, dh = size
    if (w, h) == (dw, dh):
        return x
    if w == 2 * dw and h == 2 * dh:
        s: torch.Tensor = x.int().unflatten(2, (dh, 2)).unflatten(4, (dw, 2)).sum((3, 5))
        return ((s + 2) >> 2).to(torch.uint8)
    rows, i0, i1, a0, a1, j0, j1, b0, b1 = _resize_plan(w, h, dw, dh, str(x.device))
    xs = x.index_select(2, rows)  # only the source rows the vertical pass reads
    hz = xs.index_select(3, i0).int() * a0 + xs.index_select(3, i1).int() * a1
    r = ((hz.index_select(2, j0) >> 4) * b0 >> 16) + ((hz.index_select(2, j1) >> 4) * b1 >> 16)
    return ((r + 2) >> 2).clamp_(0, 255).to(torch.uint8)


@functools.lru_cache(maxsize=64)
def _resize_plan(w: int, h: int, dw: int, dh: int, device: str) -> tuple[torch.Tensor, ...]:
    i0, i1, a0, a1 = _linear_taps(w, dw, True)
    j0, j1, b0, b1 = _linear_taps(h, dh, False)
    rows = torch.unique(torch.cat([j0, j1]))
    j0, j1 = torch.searchsorted(rows, j0), torch.searchsorted(rows, j1)
    plan = (rows, i0, i1, a0, a1, j0, j1, b0.view(-1, 1), b1.view(-1, 1))
    return tuple(t.to(device) for t in plan)
