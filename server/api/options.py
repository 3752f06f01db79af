"""Which faces to report: a request's :class:`~shared.protocol.FaceOptions` resolved against the settings.

The one place this is decided, for every surface: the ``/v1/predict`` query, a stream's
control messages and the in-process API (:meth:`emotion_service.EmotionAnalyzer.options`).
The defaults are the settings' (``EMOTION_MAX_FACES``, ``EMOTION_SCORE_THRESHOLD``), and
``EMOTION_MAX_FACES`` also caps what a request may ask for, so an operator's limit holds
whatever a client sends.
"""

from __future__ import annotations

from server.config import Settings
from server.pipeline.runner import PredictOptions
from shared.protocol import FaceOptions


def default_options(settings: Settings) -> PredictOptions:
    """What a request that sets nothing gets."""
    return PredictOptions(max_faces=settings.max_faces, min_confidence=settings.score_threshold, detect=True)


def resolve_options(
    settings: Settings, asked: FaceOptions, current: PredictOptions | None = None
) -> PredictOptions:
    """``asked`` over ``current`` (a stream's options so far; the defaults when None): a field
    ``asked`` leaves out keeps its value, and ``max_faces`` is capped by the settings."""
    base = current or default_options(settings)
    return PredictOptions(
        max_faces=base.max_faces if asked.max_faces is None else min(asked.max_faces, settings.max_faces),
        min_confidence=base.min_confidence if asked.min_confidence is None else asked.min_confidence,
        detect=base.detect if asked.detect is None else asked.detect,
    )
