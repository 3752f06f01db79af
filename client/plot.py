"""Session timelines: emotions over time per track, from a `stream --jsonl` log.

A track that leaves the picture (replies without it, or a reconnect) is drawn with a gap
there, not interpolated across. Uses matplotlib's object API with the Agg canvas, so it
never needs a display and never touches pyplot's global state.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from client.colors import rgb
from client.errors import UsageError
from shared.emotions import EMOTIONS
from shared.protocol import FaceResult

DPI = 100


@dataclass
class Track:
    """One face's series; a NaN sample marks a gap (replies without this track), so it is drawn as one."""

    name: str
    t: list[float] = field(default_factory=list)
    probs: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    samples: int = 0
    last_reply: int = -1
    last_conn: object = None

    def add(self, reply: int, conn: object, t: float, emotions: dict[str, float]) -> None:
        if self.samples and (reply > self.last_reply + 1 or conn != self.last_conn):
            self.t.append(t)  # NaN where it reappears: nothing is drawn back to its last sample
            for series in self.probs.values():
                series.append(math.nan)
        self.t.append(t)
        for emo in _order(emotions):
            self.probs[emo].append(float(emotions.get(emo, 0.0)))
        self.samples += 1
        self.last_reply, self.last_conn = reply, conn


def load_tracks(path: Path) -> tuple[dict[str, Track], int]:
    """Per-track series keyed 'track N' ('face i' when the server gives no ids), and the reply count."""
    if not path.is_file():
        raise UsageError(f"session log not found: {path}")
    tracks: dict[str, Track] = {}
    t0: float | None = None
    n = 0
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                ts = float(rec["ts"])
                faces = [FaceResult.model_validate(f) for f in rec.get("faces", [])]
            except (ValueError, KeyError, TypeError) as exc:
                raise UsageError(f"{path}:{lineno}: not a stream log line ({exc})") from exc
            n += 1
            t0 = ts if t0 is None else t0
            for i, face in enumerate(faces):
                name = f"track {face.track_id}" if face.track_id is not None else f"face {i}"
                tracks.setdefault(name, Track(name)).add(n, rec.get("conn"), ts - t0, face.emotions)
    return tracks, n


def _order(emotions: dict[str, float]) -> list[str]:
    return [e for e in EMOTIONS if e in emotions] + sorted(e for e in emotions if e not in EMOTIONS)


def plot_session(
    path: Path,
    out: Path,
    size: tuple[int, int] = (1200, 800),
    style: Literal["area", "lines"] = "area",
    max_tracks: int = 6,
) -> int:
    """Write a PNG of exactly `size` pixels; returns the number of tracks drawn."""
    fig, shown = session_figure(path, size, style, max_tracks)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, format="png")
    return shown


def session_figure(
    path: Path,
    size: tuple[int, int] = (1200, 800),
    style: Literal["area", "lines"] = "area",
    max_tracks: int = 6,
) -> tuple[Figure, int]:
    """The timeline figure (one panel per track, longest first) and the number of tracks in it."""
    tracks, n = load_tracks(path)
    shown = sorted(tracks.values(), key=lambda tr: tr.samples, reverse=True)[:max_tracks]
    fig = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    if not shown:
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"no faces in {n} replies of {path.name}", ha="center", va="center")
    else:
        axes = fig.subplots(len(shown), 1, sharex=True, squeeze=False)[:, 0]
        for ax, tr in zip(axes, shown, strict=True):
            names = list(tr.probs)
            colors = [tuple(c / 255 for c in rgb(e)) for e in names]
            if style == "area":
                ax.stackplot(tr.t, [tr.probs[e] for e in names], labels=names, colors=colors, alpha=0.9)
            else:
                for e, c in zip(names, colors, strict=True):
                    ax.plot(tr.t, tr.probs[e], label=e, color=c, lw=1.5)
            ax.set_ylim(0, 1)
            ax.set_ylabel(f"{tr.name}\nprobability")
            ax.margins(x=0)
            ax.grid(alpha=0.3)
        axes[-1].set_xlabel("seconds since start of session")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper")
        fig.suptitle(f"{path.name}: {n} replies, {len(tracks)} track(s)")
    return fig, len(shown)
