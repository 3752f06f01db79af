"""Track ids mean one person: two real faces cross a 640x480 stream, one leaves the frame and comes back.

The frames go through a real server's WS /v1/stream (real SSD detector, the stream's tracker),
one frame in flight so none is dropped. Ground truth is where each face was drawn: a reply face
belongs to the face whose visible pixels hold its box centre (B is drawn over A where they overlap).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_paths import REALFACES
from PIL import Image
from server_harness import LiveServer, jpeg, recv_json, run, server_settings
from websockets.asyncio.client import connect

from server.pipeline.detect import build_detector
from shared.protocol import StreamResult

#: Two people (one photo each, tight face crops), when the data is beside the checkout.
PHOTOS = ("happiness/Aaron_Peirsol_0001.jpg", "anger/Billy_Donovan_0001.jpg")
W, H, SIDE, FRAMES = 640, 480, 120, 60
A, B = 1, 2  # labels in the ownership map; 0 is background


@dataclass
class Scene:
    frames: list[np.ndarray]
    owner: list[np.ndarray]  # per frame, (H, W) label of the face (its detector box) drawn at each pixel
    present: dict[int, list[bool]]  # per face: at least half of its tile inside the frame


def face_tiles(astronaut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two different real people from realfaces-dev, else the astronaut and her mirror image."""

    def tile(img: Image.Image) -> np.ndarray:
        return np.asarray(img.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR))

    if all((REALFACES / p).is_file() for p in PHOTOS):
        first, second = (tile(Image.open(io.BytesIO((REALFACES / p).read_bytes()))) for p in PHOTOS)
        return first, second
    face = tile(Image.fromarray(astronaut[30:210, 140:320]))
    return face, face[:, ::-1].copy()


def positions(f: int) -> dict[int, tuple[int, int]]:
    """Top-left corners at frame ``f``: A walks left to right with a bob; B walks right to left,
    crosses A at frames 16-19 (its tile over A's lower part), leaves by the left edge for 20 frames
    (longer than the tracker keeps a lost track) and comes back in."""
    ay = 60 + 20 * np.sin(f / 6)
    ax = 20 + 450 * f / (FRAMES - 1)
    bx = 470 - 690 * f / 34 if f < 35 else -220 + 370 * (f - 35) / (FRAMES - 1 - 35)
    return {A: (int(ax), int(ay)), B: (int(bx), int(ay + 60))}


def face_in_tile(tile: np.ndarray) -> tuple[int, int, int, int]:
    """Where the server's detector puts the face in ``tile`` (tile pixels), seen alone in a frame."""
    frame = np.full((H, W, 3), 110, np.uint8)
    frame[200 : 200 + SIDE, 260 : 260 + SIDE] = tile
    boxes = build_detector("ssd").detect([torch.from_numpy(frame).permute(2, 0, 1)])[0].boxes
    assert len(boxes) == 1
    x1, y1, x2, y2 = boxes[0].round().int().tolist()
    return x1 - 260, y1 - 200, x2 - 260, y2 - 200


def build_scene(a: np.ndarray, b: np.ndarray) -> Scene:
    """The frames, and which face each pixel belongs to: the pixels of a face's detector box, B's over
    A's (its tile is in front). Owning whole tiles instead put A's box centre on B's tile where B's
    tile covers the lower part of A's (frame 15 with the astronaut and her mirror image)."""
    frames, owner = [], []
    present: dict[int, list[bool]] = {A: [], B: []}
    faces = {A: face_in_tile(a), B: face_in_tile(b)}
    for f in range(FRAMES):
        frame = np.full((H, W, 3), 110, np.uint8)
        labels = np.zeros((H, W), np.uint8)
        for label, tile in ((A, a), (B, b)):  # B last: it is in front
            x, y = positions(f)[label]
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + SIDE, W), min(y + SIDE, H)
            inside = max(x1 - x0, 0) * max(y1 - y0, 0)
            present[label].append(inside >= SIDE * SIDE / 2)
            if inside:
                frame[y0:y1, x0:x1] = tile[y0 - y : y1 - y, x0 - x : x1 - x]
                fx1, fy1, fx2, fy2 = faces[label]
                labels[max(y + fy1, 0) : max(y + fy2, 0), max(x + fx1, 0) : max(x + fx2, 0)] = label
        frames.append(frame)
        owner.append(labels)
    return Scene(frames, owner, present)


def segments(flags: list[bool]) -> list[range]:
    """Maximal runs of frames where ``flags`` is true."""
    runs, start = [], None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append(range(start, i))
            start = None
    return runs


@pytest.fixture(scope="module")
def srv(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    with LiveServer(server_settings(tiny_checkpoint, stream_max_fps=1000.0)) as server:
        yield server


def test_two_crossing_faces_keep_their_ids_and_never_share_one(
    srv: LiveServer, astronaut: np.ndarray
) -> None:
    scene = build_scene(*face_tiles(astronaut))
    assert [len(s) for s in segments(scene.present[B])] == [27, 14]  # B's two stays in the frame
    assert segments(scene.present[A]) == [range(FRAMES)]

    async def stream() -> list[StreamResult]:
        async with connect(srv.ws_url, max_size=None) as ws:
            out = []
            for frame in scene.frames:  # one in flight: every frame is answered
                await ws.send(jpeg(frame))
                out.append(StreamResult.model_validate(await recv_json(ws)))
            return out

    replies: list[StreamResult] = run(stream(), timeout=300)
    assert [r.frame for r in replies] == list(range(FRAMES)) and all(r.dropped == 0 for r in replies)

    ids: dict[int, dict[int, int]] = {A: {}, B: {}}  # face -> frame -> track id
    for f, reply in enumerate(replies):
        for face in reply.faces:
            cx = min(face.box.x + face.box.w // 2, W - 1)
            cy = min(face.box.y + face.box.h // 2, H - 1)
            who = int(scene.owner[f][cy, cx])
            assert who in (A, B), f"frame {f}: a face where none was drawn: {face.box}"
            assert f not in ids[who], f"frame {f}: two boxes on one face"
            assert face.track_id is not None
            ids[who][f] = face.track_id

    # Each face is found in most frames it is in, and in each of its stays (else this proves little).
    # Between whole-frame passes a stream searches only around the faces it knows, so a face that comes
    # in, or out from behind another, is found within `stream_redetect_every` frames: B, hidden at the
    # crossing and then half cut by the edge (where the SSD's score sits at the 0.5 threshold), is
    # found in ~23 of its 41 frames; A in ~56 of 60.
    for who in (A, B):
        shown = sum(scene.present[who])
        assert len(ids[who]) >= 0.5 * shown, f"face {who} found in {len(ids[who])} of {shown} frames"
        for seg in segments(scene.present[who]):
            assert any(f in ids[who] for f in seg), f"face {who} never found in frames {seg}"
    # Each face keeps one id for as long as it stays in the frame, through the crossing...
    for who in (A, B):
        for seg in segments(scene.present[who]):
            seen = {ids[who][f] for f in seg if f in ids[who]}
            assert len(seen) == 1, f"face {who} changed id within frames {seg}: {ids[who]}"
    # ...and no id ever names the other face (B may come back under a new id, never under A's).
    assert not set(ids[A].values()) & set(ids[B].values()), ids
