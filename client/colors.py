"""One colour per emotion, shared by the live overlay and the session plots so they read alike."""

from __future__ import annotations

#: RGB, chosen to be distinguishable and to match the browser client (server/api/web/app.js).
EMOTION_RGB: dict[str, tuple[int, int, int]] = {
    "angry": (230, 57, 70),
    "disgust": (106, 153, 78),
    "fear": (142, 108, 200),
    "happy": (255, 190, 11),
    "sad": (58, 134, 255),
    "surprise": (255, 112, 166),
    "neutral": (160, 160, 160),
}
FALLBACK_RGB = (200, 200, 200)


def rgb(emotion: str) -> tuple[int, int, int]:
    return EMOTION_RGB.get(emotion, FALLBACK_RGB)
