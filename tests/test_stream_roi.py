"""Streams detect around the previous frame's faces and the whole frame every N frames
(server/pipeline/roi.py), through a real server and real WebSocket frames."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from server_harness import LiveServer, face_tile, jpeg, recv_json, run, server_settings
from torchvision.ops import box_iou
from websockets.asyncio.client import connect

from server.pipeline.roi import CONTEXT, RegionPlanner, search_regions

EVERY = 4


@pytest.fixture(scope="module")
def srv(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    server = LiveServer(
        server_settings(tiny_checkpoint, stream_max_fps=1000.0, stream_redetect_every=EVERY)
    ).start()
    yield server
    server.stop()


def scene(astronaut: np.ndarray, faces: list[tuple[int, int, int]]) -> bytes:
    """A 640x480 JPEG with an astronaut face tile of ``side`` at each (x, y, side), on grey."""
    frame = np.full((480, 640, 3), 110, np.uint8)
    for x, y, side in faces:
        frame[y : y + side, x : x + side] = face_tile(astronaut, side)
    return jpeg(frame)


def stream(srv: LiveServer, frames: list[bytes]) -> list[dict[str, Any]]:
    async def main() -> list[dict[str, Any]]:
        out = []
        async with connect(srv.ws_url) as ws:
            for data in frames:  # lock-step: every frame answered, none dropped
                await ws.send(data)
                out.append(await recv_json(ws))
        return out

    replies: list[dict[str, Any]] = run(main())
    assert [r["frame"] for r in replies] == list(range(len(frames)))
    return replies


def boxes(reply: dict[str, Any]) -> torch.Tensor:
    return torch.tensor(
        [
            [f["box"]["x"], f["box"]["y"], f["box"]["x"] + f["box"]["w"], f["box"]["y"] + f["box"]["h"]]
            for f in reply["faces"]
        ],
        dtype=torch.float32,
    ).reshape(-1, 4)


def test_new_face_is_found_within_n_frames(srv: LiveServer, astronaut: np.ndarray) -> None:
    """Frames 0..4 hold one face; from frame 5 a second one, far from the first one's region.
    Frame 4 is a whole-frame pass, 5-7 search only around the first face, 8 is whole again."""
    first = (30, 100, 150)  # its region: 375 px square around it, x < 400
    second = (470, 160, 140)
    frames = [scene(astronaut, [first])] * 5 + [scene(astronaut, [first, second])] * 6
    roi = srv.runtime.analyzer.pipeline.region_detector
    passes = roi.passes
    replies = stream(srv, frames)
    counts = [len(r["faces"]) for r in replies]
    assert counts[:5] == [1] * 5
    entered = counts.index(2)
    assert 5 <= entered < 5 + EVERY, counts  # found within EVERY frames of entering
    assert counts[5:entered] == [1] * (entered - 5)  # region passes do not look there...
    assert counts[entered:] == [2] * (len(frames) - entered)  # ...and once found it is followed
    # Most frames were region passes (frames 1-3, 5-7, 9-10), and their boxes are the whole-frame ones.
    assert roi.passes - passes >= 8
    whole = boxes(replies[0])
    for r in replies[1:4]:
        assert box_iou(boxes(r), whole).max() > 0.85


def test_lost_face_triggers_whole_frame_detection(srv: LiveServer, astronaut: np.ndarray) -> None:
    """A face that jumps out of its region is lost on that frame and found on the next one."""
    here, there = (40, 60, 140), (440, 300, 150)
    frames = [scene(astronaut, [here])] * 3 + [scene(astronaut, [there])] * 3
    counts = [len(r["faces"]) for r in stream(srv, frames)]
    assert counts[:3] == [1, 1, 1]
    assert counts[3] == 0  # a region pass around where it was: nothing there
    assert counts[4:] == [1, 1]  # the next frame is detected whole


def test_search_regions_are_squares_kept_inside_the_image() -> None:
    regions = search_regions(torch.tensor([[300.0, 200.0, 340.0, 250.0], [0.0, 0.0, 30.0, 20.0]]), 640, 480)
    side = 50 * CONTEXT
    expected = torch.tensor([320 - side / 2, 225 - side / 2, 320 + side / 2, 225 + side / 2]).round()
    assert regions[0].tolist() == expected.tolist()  # a square around the same centre
    assert regions[1].tolist() == [0.0, 0.0, 75.0, 75.0]  # moved inside, not cut


def test_planner_schedule() -> None:
    planner = RegionPlanner(3)
    face = [(10.0, 10.0, 50.0, 50.0)]
    plans = []
    for _ in range(7):
        regions = planner.regions(640, 480)
        plans.append("whole" if regions is None else "regions")
        planner.observe(face, regions)
    assert plans == ["whole", "regions", "regions", "whole", "regions", "regions", "whole"]
    planner.observe([], planner.regions(640, 480))  # lost: no face where it was
    assert planner.regions(640, 480) is None
    apart = [(10.0, 10.0, 50.0, 50.0), (300.0, 300.0, 340.0, 340.0)]
    close = [(10.0, 10.0, 50.0, 50.0), (80.0, 10.0, 120.0, 50.0)]  # within each other's region
    for faces, whole in ((apart, False), (close, True)):
        planner = RegionPlanner(10)
        planner.observe(faces, None)
        assert (planner.regions(640, 480) is None) == whole
    assert RegionPlanner(0).regions(640, 480) is None and RegionPlanner(1).regions(640, 480) is None
