"""Box overlap and greedy non-maximum suppression, as torchvision's ``box_iou``, ``nms`` and
``batched_nms`` compute them (the same float32 arithmetic, so the same boxes survive).

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


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes greedy NMS keeps, best score first: a box goes when its IoU with a
    better kept one exceeds ``iou_threshold`` (equal scores keep their input order)."""
    if not len(boxes):
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    over = (box_iou(boxes[order], boxes[order]) > iou_threshold).cpu().numpy()
    suppressed = np.zeros(len(order), bool)
    kept = []
    for i in range(len(order)):
        if not suppressed[i]:
            kept.append(i)
            suppressed |= over[i]
    return order[torch.tensor(kept, dtype=torch.long, device=order.device)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """:func:`nms` within each group (e.g. image) alone; the kept indices, best score first."""
    kept = [
        members[nms(boxes[members], scores[members], iou_threshold)]
        for members in (torch.nonzero(groups == g).flatten() for g in torch.unique(groups))
    ]
    if not kept:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    out = torch.cat(kept)
    return out[scores[out].argsort(descending=True, stable=True)]
