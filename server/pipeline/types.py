"""Data passed between pipeline stages; the contract between detect, crop and classify."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Detections:
    """Faces found in one image, in original-image pixels, clipped to the image.

    boxes: (K, 4) float32 ``x1, y1, x2, y2``; scores: (K,) float32 in [0, 1]; sorted by score, descending.
    """

    boxes: torch.Tensor
    scores: torch.Tensor

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


class FaceDetector(Protocol):
    """Batched face detector. Images are (3, H, W) uint8 RGB tensors on the detector's device."""

    name: str

    def detect(
        self,
        images: list[torch.Tensor],
        min_confidence: float | None = None,
        max_faces: int | None = None,
    ) -> list[Detections]: ...
