"""OpenCV's Haar cascade as a fallback detector (the ``"haar"`` backend).

Useful where the SSD is too slow or to cross-check it; it is markedly worse on
non-frontal faces and has no calibrated confidence (see :meth:`HaarFaceDetector.detect`).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from server.pipeline.detect.caffe import DetectorFiles, DetectorWeightsError
from server.pipeline.types import Detections


class HaarFaceDetector:
    """Frontal-face Haar cascade; runs per image on the CPU whatever the device.

    ``input_size`` is accepted for interface symmetry but unused: the cascade scans
    the image at its own resolution, from ``min_face_size`` up.
    """

    name = "haar"

    def __init__(
        self,
        files: DetectorFiles,
        device: str | torch.device = "cpu",
        score_threshold: float = 0.5,
        max_faces: int = 20,
        min_face_size: float = 20,
        input_size: tuple[int, int] = (300, 300),
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
    ) -> None:
        if max_faces < 1 or min_face_size < 0:
            raise ValueError("max_faces must be >= 1 and min_face_size >= 0")
        self.cascade = cv2.CascadeClassifier(str(files.haar))
        if self.cascade.empty():
            raise DetectorWeightsError(f"cannot load the Haar cascade {files.haar}")
        self.device = torch.device(device)
        self.score_threshold = float(score_threshold)
        self.max_faces = int(max_faces)
        self.min_face_size = float(min_face_size)
        self.input_size = input_size
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors

    def detect(
        self, images: list[torch.Tensor], min_confidence: float | None = None, max_faces: int | None = None
    ) -> list[Detections]:
        """Faces per image. The score is ``n / (n + min_neighbors)`` for a face backed by ``n``
        raw cascade hits: monotone in the evidence, and above 0.5 exactly for the faces the
        cascade itself accepts, so the default threshold keeps its usual behaviour.
        """
        threshold = self.score_threshold if min_confidence is None else float(min_confidence)
        limit = self.max_faces if max_faces is None else int(max_faces)
        side = max(1, round(self.min_face_size))
        out = []
        for img in images:
            if img.ndim != 3 or img.shape[0] not in (1, 3) or img.dtype != torch.uint8:
                raise ValueError(
                    f"expected a (3, H, W) uint8 RGB image tensor, got {tuple(img.shape)} {img.dtype}"
                )
            arr = np.ascontiguousarray(img.permute(1, 2, 0).cpu().numpy())
            gray = arr[..., 0] if arr.shape[2] == 1 else cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
            rects, hits = self.cascade.detectMultiScale2(
                gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(side, side)
            )
            h, w = gray.shape
            if len(rects) == 0:
                boxes, scores = np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
            else:
                r = np.asarray(rects, np.float32).reshape(-1, 4)
                n = np.asarray(hits, np.float32).reshape(-1)
                boxes = np.stack([r[:, 0], r[:, 1], r[:, 0] + r[:, 2], r[:, 1] + r[:, 3]], 1)
                boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
                scores = n / (n + self.min_neighbors)
                order = np.argsort(-scores, kind="stable")
                order = order[scores[order] > threshold][:limit]
                boxes, scores = boxes[order], scores[order]
            out.append(
                Detections(
                    torch.from_numpy(boxes).to(self.device),
                    torch.from_numpy(scores.astype(np.float32)).to(self.device),
                )
            )
        return out
