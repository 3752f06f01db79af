"""Per-stream face identity across frames (greedy IoU matching) and per-track EMA smoothing.

Webcam faces move little between consecutive frames, so matching boxes by overlap
is enough to keep a stable ``track_id``; the id lets clients colour faces
consistently and lets the server smooth each face's scores without mixing faces.
A track unseen for a few frames (hidden behind another face, or missed by the detector)
is matched where its last velocity puts it by now, as SORT does with its Kalman filter:
a face that walks on while hidden would otherwise come back too far from where it was
last seen to overlap it.
State is bounded: tracks unseen for ``max_missed`` frames are forgotten.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) ``x1, y1, x2, y2`` boxes -> (N, M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


@dataclass
class Track:
    id: int
    box: np.ndarray
    missed: int = 0
    scores: np.ndarray | None = None
    #: Box motion per frame (x1, y1, x2, y2), from its last two sightings; None (none yet) for a new track.
    velocity: np.ndarray | None = None

    def predicted(self) -> np.ndarray:
        """Where the box should be in the frame being matched: ``missed + 1`` frames after it was seen."""
        return self.box if self.velocity is None else self.box + self.velocity * (self.missed + 1)

    def seen(self, box: np.ndarray) -> None:
        """Matched in this frame: the new box, and the motion per frame since the last sighting."""
        self.velocity = (box - self.box) / (self.missed + 1)
        self.box, self.missed = box, 0


class Tracker:
    """Assigns track ids to each frame's boxes; one instance per stream."""

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 15, max_tracks: int = 128) -> None:
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.max_tracks = max_tracks
        self.tracks: dict[int, Track] = {}
        self._next_id = 1

    def update(self, boxes: np.ndarray) -> list[int]:
        """Match ``boxes`` (N, 4) to live tracks, highest IoU first; unmatched boxes start new tracks."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        live = list(self.tracks.values())
        ids: list[int | None] = [None] * len(boxes)
        if live and len(boxes):
            iou = iou_matrix(boxes, np.stack([t.predicted() for t in live]))
            used_tracks: set[int] = set()
            for flat in np.argsort(-iou, axis=None):
                i, j = divmod(int(flat), len(live))
                if iou[i, j] < self.iou_threshold:
                    break
                if ids[i] is not None or j in used_tracks:
                    continue
                ids[i] = live[j].id
                used_tracks.add(j)
        matched = {i for i in ids if i is not None}
        for track in live:
            if track.id not in matched:
                track.missed += 1
                if track.missed > self.max_missed:
                    del self.tracks[track.id]
        out: list[int] = []
        for box, tid in zip(boxes, ids, strict=True):
            if tid is None:
                tid = self._next_id
                self._next_id += 1
                self.tracks[tid] = Track(tid, box)
            else:
                self.tracks[tid].seen(box)
            out.append(tid)
        self._evict()
        return out

    def _evict(self) -> None:
        """Keep at most ``max_tracks``, forgetting the longest-unseen first (bounded memory per stream)."""
        excess = len(self.tracks) - self.max_tracks
        if excess > 0:
            for track in sorted(self.tracks.values(), key=lambda t: -t.missed)[:excess]:
                del self.tracks[track.id]

    def smooth(self, track_id: int, probs: np.ndarray, factor: float) -> np.ndarray:
        """EMA of a track's class probabilities: ``factor * previous + (1 - factor) * probs``.

        ``factor`` 0 returns ``probs`` unchanged. The result stays a distribution
        (a convex combination of two), and the state is kept even when not
        smoothing so that switching smoothing on mid-stream starts from a real value.
        """
        probs = np.asarray(probs, dtype=np.float64)
        track = self.tracks.get(track_id)
        if track is None:
            return probs
        prev = track.scores
        out = (
            probs
            if prev is None or factor <= 0.0 or prev.shape != probs.shape
            else factor * prev + (1 - factor) * probs
        )
        track.scores = out
        return out
