"""Drawing results onto BGR frames with OpenCV primitives only (no fonts or assets to ship).

What goes where is `client/layout.py`, shared with the Tk window; this module only rasterises it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import cv2
import numpy as np

from client.layout import HudStats, Shape, Text, overlay_shapes
from shared.protocol import FaceResult

__all__ = ["HudStats", "draw_emoji", "draw_result", "draw_shapes", "measure"]

FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE = (255, 255, 255)


def _thickness(scale: float) -> int:
    return max(1, round(scale * 2))


def measure(text: str, scale: float) -> tuple[int, int, int]:
    """`layout.Measure` for OpenCV's Hershey font, at the thickness `draw_shapes` writes it with."""
    (w, h), base = cv2.getTextSize(text, FONT, scale, _thickness(scale))
    return w, h, base


def _bgr(color: tuple[int, int, int]) -> tuple[int, int, int]:
    return (color[2], color[1], color[0])


def _shade(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, alpha: float) -> None:
    """Darken a rectangle in place so text stays readable on any background."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 > x0 and y1 > y0:
        roi = img[y0:y1, x0:x1]
        roi[:] = (roi * (1.0 - alpha)).astype(img.dtype)


def draw_shapes(img: np.ndarray, shapes: Iterable[Shape]) -> None:
    """Rasterise `layout` shapes onto a BGR image, in place."""
    for s in shapes:
        if isinstance(s, Text):
            cv2.putText(
                img, s.text, (s.x, s.y), FONT, s.scale, _bgr(s.color), _thickness(s.scale), cv2.LINE_AA
            )
        elif s.shade:
            _shade(img, s.x0, s.y0, s.x1, s.y1, s.shade)
        elif s.fill is not None:
            cv2.rectangle(img, (s.x0, s.y0), (s.x1, s.y1), _bgr(s.fill), -1)
        elif s.outline is not None:
            cv2.rectangle(img, (s.x0, s.y0), (s.x1, s.y1), _bgr(s.outline), s.width, cv2.LINE_AA)


def draw_result(
    img: np.ndarray, faces: Iterable[FaceResult], stats: HudStats | None = None, emoji: bool = False
) -> np.ndarray:
    """Annotated copy of `img` (the caller's frame is left untouched)."""
    out = img.copy()
    faces = list(faces)
    if emoji:
        for face in faces:
            b = face.box
            draw_emoji(out, (b.x, b.y, b.w, b.h), face.dominant)
    draw_shapes(out, overlay_shapes(faces, out.shape[1], out.shape[0], measure, stats))
    return out


# --- emoji ---------------------------------------------------------------------------------------

_EMOJI_FACE = {"disgust": (90, 200, 160), "fear": (235, 200, 170), "angry": (60, 90, 230)}  # BGR skin tints
_YELLOW = (40, 200, 255)
_INK = (40, 40, 60)


def _arc(img: np.ndarray, c: tuple[int, int], axes: tuple[int, int], a0: float, a1: float, t: int) -> None:
    cv2.ellipse(img, c, axes, 0, a0, a1, _INK, t, cv2.LINE_AA)


def _poly(img: np.ndarray, pts: Sequence[tuple[float, float]], t: int) -> None:
    arr = np.array([[round(x), round(y)] for x, y in pts], np.int32)
    cv2.polylines(img, [arr], False, _INK, t, cv2.LINE_AA)


def draw_emoji(img: np.ndarray, box: tuple[int, int, int, int], emotion: str) -> None:
    """A flat emoji for `emotion` covering the face box, drawn from circles, arcs and lines."""
    x, y, w, h = box
    r = max(6, min(w, h) // 2)
    cx, cy = x + w // 2, y + h // 2
    t = max(1, r // 12)
    cv2.circle(img, (cx, cy), r, _EMOJI_FACE.get(emotion, _YELLOW), -1, cv2.LINE_AA)
    cv2.circle(img, (cx, cy), r, _INK, t, cv2.LINE_AA)
    ex, ey, er = round(r * 0.35), cy - round(r * 0.2), max(2, round(r * 0.1))
    mouth_y = cy + round(r * 0.42)
    if emotion in {"surprise", "fear"}:  # wide eyes, round mouth
        for sx in (-1, 1):
            cv2.circle(img, (cx + sx * ex, ey), round(er * 1.6), WHITE, -1, cv2.LINE_AA)
            cv2.circle(img, (cx + sx * ex, ey), er, _INK, -1, cv2.LINE_AA)
        mr = round(r * (0.22 if emotion == "surprise" else 0.15))
        cv2.ellipse(img, (cx, mouth_y), (mr, round(mr * 1.3)), 0, 0, 360, _INK, -1, cv2.LINE_AA)
    else:
        for sx in (-1, 1):
            cv2.circle(img, (cx + sx * ex, ey), er, _INK, -1, cv2.LINE_AA)
    brow_y, bw = ey - round(r * 0.22), round(r * 0.2)
    if emotion == "angry":  # brows slanting down to the nose
        for sx in (-1, 1):
            _poly(
                img,
                [(cx + sx * (ex + bw), brow_y - bw * 0.6), (cx + sx * (ex - bw), brow_y + bw * 0.4)],
                t * 2,
            )
    elif emotion in {"sad", "fear"}:  # brows slanting up to the nose
        for sx in (-1, 1):
            _poly(
                img,
                [(cx + sx * (ex + bw), brow_y + bw * 0.4), (cx + sx * (ex - bw), brow_y - bw * 0.5)],
                t * 2,
            )
    elif emotion == "surprise":
        for sx in (-1, 1):
            _arc(img, (cx + sx * ex, brow_y - bw // 2), (bw, bw // 2), 200, 340, t * 2)

    mw = round(r * 0.45)
    if emotion == "happy":
        _arc(img, (cx, cy + round(r * 0.1)), (mw, round(r * 0.4)), 20, 160, t * 2)
    elif emotion in {"sad", "angry"}:
        _arc(img, (cx, mouth_y + round(r * 0.2)), (mw, round(r * 0.22)), 200, 340, t * 2)
    elif emotion == "disgust":  # skewed wavy mouth
        pts = [
            (cx - mw + i * mw / 4, mouth_y + math.sin(i * 1.6) * r * 0.06 - i * r * 0.02) for i in range(9)
        ]
        _poly(img, pts, t * 2)
    elif emotion not in {"surprise", "fear"}:  # neutral / unknown: straight mouth
        _poly(img, [(cx - mw, mouth_y), (cx + mw, mouth_y)], t * 2)
