"""server.pipeline.track: ids stay with moving faces, new faces get new ids, EMA stays a distribution."""

from __future__ import annotations

import numpy as np

from server.pipeline.track import Tracker, iou_matrix


def test_iou_matrix() -> None:
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [100, 100, 100, 100]])
    iou = iou_matrix(a, b)
    assert iou.shape == (2, 3)
    assert iou[0, 0] == 1.0 and abs(iou[0, 1] - 50 / 150) < 1e-9
    assert iou[1].max() == 0.0 and iou[:, 2].max() == 0.0  # degenerate box: no division by zero


def test_ids_follow_moving_faces_and_swap_order() -> None:
    t = Tracker()
    left, right = np.array([10, 10, 60, 60]), np.array([200, 10, 260, 70])
    a, b = t.update(np.stack([left, right]))
    assert a != b
    # Both moved a little and the detector listed them in the other order.
    assert t.update(np.stack([right + 4, left + 3])) == [b, a]
    # A third face appears: new id; the others keep theirs.
    c_ids = t.update(np.stack([left + 6, right + 8, np.array([400, 400, 450, 450])]))
    assert c_ids[:2] == [a, b] and c_ids[2] not in (a, b)


def test_a_face_hidden_while_it_walks_keeps_its_id() -> None:
    """Seen at 8 px per frame, hidden for 4 frames, seen again 40 px on: its last box overlaps the new one
    by IoU 0.2 (below the 0.3 threshold), where its velocity puts it by IoU 1."""
    t = Tracker()
    face = np.array([100.0, 100.0, 160.0, 160.0])
    step = np.array([8.0, 0.0, 8.0, 0.0])
    (tid,) = t.update(face[None])
    assert t.update((face + step)[None]) == [tid]
    for _ in range(4):
        t.update(np.zeros((0, 4)))
    back = face + 6 * step
    assert iou_matrix(back, face + step)[0, 0] < t.iou_threshold
    assert t.update(back[None]) == [tid]
    # A new face where the hidden one stood still is not taken for it.
    other = Tracker()
    (first,) = other.update(face[None])
    assert other.update(face[None]) == [first]
    for _ in range(4):
        other.update(np.zeros((0, 4)))
    assert other.update(back[None]) != [first]


def test_lost_tracks_expire_and_state_is_bounded() -> None:
    t = Tracker(max_missed=2, max_tracks=3)
    (first,) = t.update(np.array([[0, 0, 10, 10]]))
    for _ in range(3):
        t.update(np.zeros((0, 4)))
    assert first not in t.tracks
    (again,) = t.update(np.array([[0, 0, 10, 10]]))
    assert again != first  # a face that was gone long enough is a new track
    t.update(np.array([[i * 100, 0, i * 100 + 10, 10] for i in range(10)]))
    assert len(t.tracks) <= 3


def test_ema_smoothing() -> None:
    t = Tracker()
    (tid,) = t.update(np.array([[0, 0, 10, 10]]))
    p1, p2 = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    assert np.allclose(t.smooth(tid, p1, 0.6), p1)  # first value passes through
    s = t.smooth(tid, p2, 0.6)
    assert np.allclose(s, [0.6, 0.4, 0.0]) and abs(s.sum() - 1) < 1e-12
    assert np.allclose(t.smooth(tid, p1, 0.0), p1)  # 0 = off
    assert np.allclose(t.smooth(999, p2, 0.9), p2)  # unknown track: unchanged
