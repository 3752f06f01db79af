"""Pipeline results -> the :mod:`shared.protocol` replies: the one place replies are assembled.

``POST /v1/predict``, each ``WS /v1/stream`` result and the in-process API
(:class:`emotion_service.EmotionAnalyzer`) all encode here, so they agree on boxes, rounding
and timings, and a field added to a reply is added once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from server.pipeline.decode import DecodedImage
from server.pipeline.runner import Face, JobResult
from shared.protocol import FaceBox, FaceResult, ImageInfo, ModelRef, PredictResponse, StreamResult, Timing


def face_box(box: tuple[float, float, float, float], width: int, height: int) -> FaceBox:
    """Float corners -> integer x, y, w, h clipped to the image."""
    x1 = min(max(round(box[0]), 0), width)
    y1 = min(max(round(box[1]), 0), height)
    x2 = min(max(round(box[2]), x1), width)
    y2 = min(max(round(box[3]), y1), height)
    return FaceBox(x=x1, y=y1, w=x2 - x1, h=y2 - y1)


def face_result(
    face: Face,
    classes: Sequence[str],
    image: DecodedImage,
    probs: np.ndarray | None = None,
    track_id: int | None = None,
) -> FaceResult:
    """One face; ``probs`` replaces the face's own scores (a stream's smoothed ones)."""
    p = face.probs if probs is None else probs
    return FaceResult(
        box=face_box(face.box, image.width, image.height),
        confidence=float(min(max(face.score, 0.0), 1.0)),
        emotions={name: float(v) for name, v in zip(classes, p, strict=True)},
        dominant=classes[int(np.argmax(p))],
        track_id=track_id,
    )


def _image(image: DecodedImage) -> ImageInfo:
    return ImageInfo(width=image.width, height=image.height)


def _timing(image: DecodedImage, result: JobResult, started: float) -> Timing:
    """``started``: the ``perf_counter`` when the request or the frame arrived (see ``timing_ms``
    in docs/protocol.md)."""
    return Timing(
        decode=round(image.decode_ms, 3),
        detect=round(result.detect_ms, 3),
        classify=round(result.classify_ms, 3),
        total=round((time.perf_counter() - started) * 1000.0, 3),
    )


def predict_response(
    image: DecodedImage, result: JobResult, classes: Sequence[str], model: ModelRef, started: float
) -> PredictResponse:
    """The ``/v1/predict`` reply (and :meth:`EmotionAnalyzer.analyze`'s) for one image."""
    return PredictResponse(
        faces=[face_result(f, classes, image) for f in result.faces],
        image=_image(image),
        model=model,
        timing_ms=_timing(image, result, started),
    )


def stream_result(
    frame: int,
    image: DecodedImage,
    result: JobResult,
    classes: Sequence[str],
    tracks: Sequence[tuple[int, np.ndarray]],
    dropped: int,
    started: float,
) -> StreamResult:
    """One stream reply; ``tracks`` holds each face's track id and (smoothed) scores, in face order."""
    return StreamResult(
        frame=frame,
        faces=[
            face_result(f, classes, image, probs, tid)
            for f, (tid, probs) in zip(result.faces, tracks, strict=True)
        ],
        image=_image(image),
        timing_ms=_timing(image, result, started),
        dropped=dropped,
    )
