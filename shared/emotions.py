"""The FER2013 label set.

The order is FER2013's integer label order (0=angry ... 6=neutral); a checkpoint
records the subset and order it was trained with, so this tuple is only the
canonical vocabulary, not an assumption about any model's output layout.
"""

from __future__ import annotations

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

#: Folder / CSV spellings seen in the wild, mapped to the canonical name.
SYNONYMS: dict[str, str] = {
    "anger": "angry",
    "angry": "angry",
    "mad": "angry",
    "disgust": "disgust",
    "disgusted": "disgust",
    "fear": "fear",
    "fearful": "fear",
    "afraid": "fear",
    "scared": "fear",
    "happy": "happy",
    "happiness": "happy",
    "joy": "happy",
    "sad": "sad",
    "sadness": "sad",
    "surprise": "surprise",
    "surprised": "surprise",
    "neutral": "neutral",
    "neutrality": "neutral",
    "calm": "neutral",
}


def canonical_emotion(name: str) -> str | None:
    """Map a class-folder or label spelling to the canonical name, or None if unknown."""
    key = name.strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    return SYNONYMS.get(key)
