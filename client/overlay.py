"""Drawing results onto BGR frames with OpenCV primitives only (no fonts or assets to ship)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from client.colors import bgr
from shared.emotions import EMOTIONS
from shared.protocol import FaceResult

FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE, BLACK = (255, 255, 255), (0, 0, 0)


def _shade(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, alpha: float = 0.55) -> None:
    """Darken a rectangle in place so text stays readable on any background."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 > x0 and y1 > y0:
        roi = img[y0:y1, x0:x1]
        roi[:] = (roi * (1.0 - alpha)).astype(img.dtype)


def _text(
    img: np.ndarray, text: str, org: tuple[int, int], scale: float, color: tuple[int, int, int] = WHITE
) -> None:
    cv2.putText(img, text, org, FONT, scale, color, max(1, round(scale * 2)), cv2.LINE_AA)


def draw_face(img: np.ndarray, face: FaceResult, bars: bool = True, emoji: bool = False) -> None:
    """Box, 'label 87% #id' tag and (optionally) per-emotion bars for one face, in place."""
    b = face.box
    color = bgr(face.dominant)
    scale = max(0.45, min(1.0, img.shape[1] / 1280))
    thick = max(2, round(img.shape[1] / 400))
    if emoji:
        draw_emoji(img, (b.x, b.y, b.w, b.h), face.dominant)
    cv2.rectangle(img, (b.x, b.y), (b.x + b.w, b.y + b.h), color, thick, cv2.LINE_AA)

    prob = face.emotions.get(face.dominant, 0.0)
    tag = f"{face.dominant} {prob:.0%}" + (f"  #{face.track_id}" if face.track_id is not None else "")
    (tw, th), base = cv2.getTextSize(tag, FONT, scale, max(1, round(scale * 2)))
    ty = b.y - 6 if b.y - th - base - 6 >= 0 else b.y + b.h + th + 6
    cv2.rectangle(img, (b.x - thick // 2, ty - th - 4), (b.x + tw + 6, ty + base), color, -1)
    _text(img, tag, (b.x + 3, ty - 1), scale, BLACK)
    if bars:
        draw_bars(img, face, scale)


def draw_bars(img: np.ndarray, face: FaceResult, scale: float) -> None:
    """Per-emotion probability bars beside the box (right, else left, else inside)."""
    names = [e for e in EMOTIONS if e in face.emotions] + [e for e in face.emotions if e not in EMOTIONS]
    s = scale * 0.8
    row = round(26 * s) + 4
    label_w = cv2.getTextSize("surprise", FONT, s, 1)[0][0] + 10
    bar_w = round(90 * s)
    pw, ph = label_w + bar_w + 10, row * len(names) + 6
    b, (h, w) = face.box, img.shape[:2]
    x0 = b.x + b.w + 6 if b.x + b.w + 6 + pw <= w else (b.x - 6 - pw if b.x - 6 - pw >= 0 else b.x + 2)
    y0 = min(max(0, b.y), max(0, h - ph))
    _shade(img, x0, y0, x0 + pw, y0 + ph)
    for i, name in enumerate(names):
        y = y0 + 4 + i * row
        p = float(face.emotions[name])
        _text(img, name, (x0 + 4, y + row - 6), s)
        bx = x0 + 4 + label_w
        cv2.rectangle(img, (bx, y + 3), (bx + bar_w, y + row - 3), (70, 70, 70), -1)
        cv2.rectangle(img, (bx, y + 3), (bx + round(bar_w * p), y + row - 3), bgr(name), -1)


@dataclass
class HudStats:
    fps: float = 0.0
    latency_ms: float | None = None
    dropped: int = 0
    faces: int = 0
    status: str = ""
    error: bool = False


def draw_hud(img: np.ndarray, stats: HudStats) -> None:
    """fps / round-trip latency / dropped frames, plus a connection status line, top-left."""
    scale = max(0.45, min(0.8, img.shape[1] / 1280))
    lat = "-" if stats.latency_ms is None else f"{stats.latency_ms:.0f} ms"
    lines: list[tuple[str, tuple[int, int, int]]] = [
        (f"{stats.fps:4.1f} fps   rtt {lat}   dropped {stats.dropped}   faces {stats.faces}", WHITE)
    ]
    if stats.status:
        lines.append((stats.status, (80, 80, 255) if stats.error else (120, 230, 120)))
    row = round(30 * scale)
    width = max(cv2.getTextSize(t, FONT, scale, 1)[0][0] for t, _ in lines) + 16
    _shade(img, 0, 0, width, row * len(lines) + 8, 0.6)
    for i, (text, color) in enumerate(lines):
        _text(img, text, (8, (i + 1) * row), scale, color)


def draw_result(
    img: np.ndarray, faces: Iterable[FaceResult], stats: HudStats | None = None, emoji: bool = False
) -> np.ndarray:
    """Annotated copy of `img` (the caller's frame is left untouched)."""
    out = img.copy()
    for face in faces:
        draw_face(out, face, emoji=emoji)
    if stats is not None:
        draw_hud(out, stats)
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
