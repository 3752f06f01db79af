"""OpenCV's Haar cascade as a fallback detector (the ``"haar"`` backend).

Useful where the SSD is too slow or to cross-check it; it is markedly worse on
non-frontal faces and has no calibrated confidence (see :meth:`HaarFaceDetector.detect`).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from server.pipeline.detect.files import DetectorFiles, DetectorWeightsError
from server.pipeline.detect.inputs import as_rgb
from server.pipeline.detect.options import DetectorOptions
from server.pipeline.types import Detections


class HaarFaceDetector:
    """Frontal-face Haar cascade; runs per image on the CPU whatever the device.

    ``options.input_size`` is unused: the cascade scans the image at its own resolution,
    from ``options.min_face_size`` up.
    """

    name = "haar"

    def __init__(
        self,
        files: DetectorFiles,
        options: DetectorOptions | None = None,
        device: str | torch.device = "cpu",
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
    ) -> None:
        self.options = options or DetectorOptions()
        self.cascade = cv2.CascadeClassifier(str(files.haar))
        if self.cascade.empty():
            raise DetectorWeightsError(f"cannot load the Haar cascade {files.haar}")
        self.device = torch.device(device)
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors

    def detect(
        self, images: list[torch.Tensor], min_confidence: float | None = None, max_faces: int | None = None
    ) -> list[Detections]:
        """Faces per image. The score is ``n / (n + min_neighbors)`` for a face backed by ``n``
        raw cascade hits: monotone in the evidence, and above 0.5 exactly for the faces the
        cascade itself accepts, so the default threshold keeps its usual behaviour.
        """
        threshold, limit = self.options.per_call(min_confidence, max_faces)
        side = max(1, round(self.options.min_face_size))
        out = []
        for img in images:
            rgb = as_rgb(img)
            arr = np.ascontiguousarray(rgb.permute(1, 2, 0).cpu().numpy())
            gray = arr[..., 0] if img.shape[0] == 1 else cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
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
