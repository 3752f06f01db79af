"""What the live overlay draws where: boxes, `label 87% #id` tags, per-emotion bars and the HUD.

Both windows draw the same layout: OpenCV rasterises these shapes onto the frame
(`client/overlay.py`), the Tk window turns them into canvas items (`client/tk_display.py`). Each
passes its own `Measure`, since the two draw text in different fonts. Pure Python, no imports
beyond the schemas, so the lean install can use it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from client.colors import rgb
from shared.emotions import EMOTIONS
from shared.protocol import FaceResult

RGB = tuple[int, int, int]
WHITE: RGB = (255, 255, 255)
BLACK: RGB = (0, 0, 0)
BAR_TROUGH: RGB = (70, 70, 70)
STATUS_OK: RGB = (120, 230, 120)
STATUS_ERROR: RGB = (255, 80, 80)


@dataclass(frozen=True)
class Rect:
    """Corners inclusive. `shade` > 0 darkens what lies beneath (a translucent panel) instead of filling."""

    x0: int
    y0: int
    x1: int
    y1: int
    fill: RGB | None = None
    outline: RGB | None = None
    width: int = 1
    shade: float = 0.0


@dataclass(frozen=True)
class Text:
    """`text` with its baseline starting at (x, y)."""

    x: int
    y: int
    text: str
    color: RGB
    scale: float  # OpenCV font scale; the Tk window maps it to a pixel size


Shape = Rect | Text


class Measure(Protocol):
    def __call__(self, text: str, scale: float) -> tuple[int, int, int]:
        """(width, height above the baseline, depth below it) of `text` in pixels."""
        ...


@dataclass
class HudStats:
    fps: float = 0.0
    latency_ms: float | None = None
    dropped: int = 0
    faces: int = 0
    status: str = ""
    error: bool = False


def face_shapes(
    face: FaceResult, width: int, height: int, measure: Measure, bars: bool = True
) -> list[Shape]:
    """Box in the dominant emotion's colour, its tag above (else below) it, and the bars beside it."""
    b = face.box
    color = rgb(face.dominant)
    scale = max(0.45, min(1.0, width / 1280))
    thick = max(2, round(width / 400))
    shapes: list[Shape] = [Rect(b.x, b.y, b.x + b.w, b.y + b.h, outline=color, width=thick)]
    prob = face.emotions.get(face.dominant, 0.0)
    tag = f"{face.dominant} {prob:.0%}" + (f"  #{face.track_id}" if face.track_id is not None else "")
    tw, th, base = measure(tag, scale)
    ty = b.y - 6 if b.y - th - base - 6 >= 0 else b.y + b.h + th + 6
    shapes.append(Rect(b.x - thick // 2, ty - th - 4, b.x + tw + 6, ty + base, fill=color))
    shapes.append(Text(b.x + 3, ty - 1, tag, BLACK, scale))
    if bars:
        shapes += bar_shapes(face, width, height, scale, measure)
    return shapes


def bar_shapes(face: FaceResult, width: int, height: int, scale: float, measure: Measure) -> list[Shape]:
    """Per-emotion probability bars beside the box (right, else left, else inside)."""
    names = [e for e in EMOTIONS if e in face.emotions] + [e for e in face.emotions if e not in EMOTIONS]
    s = scale * 0.8
    row = round(26 * s) + 4
    label_w = measure("surprise", s)[0] + 10
    bar_w = round(90 * s)
    pw, ph = label_w + bar_w + 10, row * len(names) + 6
    b = face.box
    right, left = b.x + b.w + 6, b.x - 6 - pw
    x0 = right if right + pw <= width else (left if left >= 0 else b.x + 2)
    y0 = min(max(0, b.y), max(0, height - ph))
    shapes: list[Shape] = [Rect(x0, y0, x0 + pw, y0 + ph, shade=0.55)]
    for i, name in enumerate(names):
        y = y0 + 4 + i * row
        p = min(1.0, max(0.0, float(face.emotions[name])))
        bx = x0 + 4 + label_w
        shapes.append(Text(x0 + 4, y + row - 6, name, WHITE, s))
        shapes.append(Rect(bx, y + 3, bx + bar_w, y + row - 3, fill=BAR_TROUGH))
        shapes.append(Rect(bx, y + 3, bx + round(bar_w * p), y + row - 3, fill=rgb(name)))
    return shapes


def hud_shapes(stats: HudStats, width: int, measure: Measure) -> list[Shape]:
    """fps / round-trip latency / dropped frames / faces, plus a connection status line, top-left."""
    scale = max(0.45, min(0.8, width / 1280))
    lat = "-" if stats.latency_ms is None else f"{stats.latency_ms:.0f} ms"
    lines: list[tuple[str, RGB]] = [
        (f"{stats.fps:4.1f} fps   rtt {lat}   dropped {stats.dropped}   faces {stats.faces}", WHITE)
    ]
    if stats.status:
        lines.append((stats.status, STATUS_ERROR if stats.error else STATUS_OK))
    row = round(30 * scale)
    panel_w = max(measure(t, scale)[0] for t, _ in lines) + 16
    shapes: list[Shape] = [Rect(0, 0, panel_w, row * len(lines) + 8, shade=0.6)]
    shapes += [Text(8, (i + 1) * row, text, color, scale) for i, (text, color) in enumerate(lines)]
    return shapes


def overlay_shapes(
    faces: Iterable[FaceResult], width: int, height: int, measure: Measure, stats: HudStats | None = None
) -> list[Shape]:
    """Everything one frame shows, in drawing order (later shapes on top)."""
    shapes = [s for face in faces for s in face_shapes(face, width, height, measure)]
    if stats is not None:
        shapes += hud_shapes(stats, width, measure)
    return shapes
