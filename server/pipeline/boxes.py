"""Box overlap and greedy non-maximum suppression, as torchvision's ``box_iou`` and ``nms`` compute
them (the same float32 arithmetic, so the same boxes survive).

Why not torchvision's: importing ``torchvision.ops`` loads ``torch._dynamo`` and triton, +165 MiB
of idle RSS in every server process for three small functions (docs/benchmarks.md, "Idle memory");
``tests/test_boxes.py`` holds these to torchvision's on random and tied boxes.
"""

from __future__ import annotations

import numpy as np
import torch


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _intersection(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4) and (M, 4) boxes -> (N, M) areas of their overlaps."""
    lo = torch.maximum(a[:, None, :2], b[None, :, :2])
    hi = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (hi - lo).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4) and (M, 4) ``x1, y1, x2, y2`` boxes -> (N, M) intersection over union."""
    inter = _intersection(a, b)
    return inter / (_area(a)[:, None] + _area(b) - inter)


def box_inside_share(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4) and (M, 4) boxes -> (N, M) share of each ``a`` box's area that lies inside each ``b`` box."""
    return _intersection(a, b) / _area(a).clamp(min=1e-6)[:, None]


def greedy_nms(boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS of (N, 4) float32 boxes already ordered best first: the indices kept, in order.

    In numpy, with :func:`box_iou`'s float32 arithmetic: a detector's few dozen candidates cost
    ~10 small ops here, where torch's per-op overhead made NMS a visible share of a CPU request.
    """
    lo = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    hi = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    wh = np.maximum(hi - lo, np.float32(0))
    inter = wh[..., 0] * wh[..., 1]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    with np.errstate(invalid="ignore", divide="ignore"):  # an empty box's 0 / 0 overlaps nothing
        over = inter / (area[:, None] + area - inter) > iou_threshold
    suppressed = np.zeros(len(boxes), bool)
    kept = []
    for i in range(len(boxes)):
        if not suppressed[i]:
            kept.append(i)
            suppressed |= over[i]
    return np.asarray(kept, dtype=np.int64)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes greedy NMS keeps, best score first: a box goes when its IoU with a
    better kept one exceeds ``iou_threshold`` (equal scores keep their input order)."""
    if not len(boxes):
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    kept = greedy_nms(boxes[order].float().cpu().numpy(), iou_threshold)
    return order[torch.from_numpy(kept).to(order.device)]
