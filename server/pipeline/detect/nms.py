"""OpenCV's ``DetectionOutput`` selection (threshold, ``top_k``, greedy NMS, ``keep_top_k``), batched."""

from __future__ import annotations

import torch

from server.pipeline.boxes import batched_nms
from server.pipeline.detect.specs import OutputSpec


def select_detections(
    boxes: torch.Tensor, scores: torch.Tensor, threshold: float, spec: OutputSpec
) -> list[torch.Tensor]:
    """Per image of (B, P, 4) ``boxes`` and (B, P) ``scores``, the prior indices kept, best first:
    candidates with score > max(threshold, confidence_threshold), the ``top_k`` best, greedy
    NMS, then ``keep_top_k``.

    Filtering at the caller's threshold before NMS gives the same surviving boxes as
    OpenCV's NMS at 0.01 followed by a threshold: a box is only ever suppressed by
    higher-scoring ones. Equal scores (flat image regions give many) are ordered by
    prior index, as OpenCV's stable sort does, so even ties resolve identically.
    """
    bsz = scores.shape[0]
    img_idx, prior_idx = (scores > spec.score_floor(threshold)).nonzero(as_tuple=True)
    cand = scores[img_idx, prior_idx]
    order = cand.sort(descending=True, stable=True).indices
    order = order[img_idx[order].sort(stable=True).indices]  # by image, then score, then prior
    img_idx, prior_idx = img_idx[order], prior_idx[order]
    counts = torch.bincount(img_idx, minlength=bsz)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(img_idx.numel(), device=scores.device) - starts[img_idx]
    if spec.top_k >= 0:
        top = rank < spec.top_k
        img_idx, prior_idx = img_idx[top], prior_idx[top]
    # NMS ranks by the position in that order (unique), not by the raw, tied scores.
    position = -torch.arange(img_idx.numel(), device=scores.device, dtype=torch.float32)
    kept = batched_nms(boxes[img_idx, prior_idx], position, img_idx, spec.nms_threshold)
    kept = kept.sort().values  # back to (image, score) order
    kept_img, kept_prior = img_idx[kept], prior_idx[kept]
    out = []
    for i in range(bsz):
        sel = kept_prior[kept_img == i]
        out.append(sel if spec.keep_top_k < 0 else sel[: spec.keep_top_k])
    return out
