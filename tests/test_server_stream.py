"""WS /v1/stream on a real server: ordering, newest-wins drops, tracks, smoothing, close codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from server_harness import (
    LiveServer,
    close_code,
    encode,
    faces_canvas,
    frame_640x480,
    jpeg,
    jpeg_claiming,
    recv_json,
    run,
    server_settings,
)
from websockets.asyncio.client import connect

from shared.protocol import StreamResult

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def srv(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    # Whole-frame detection on every frame: replies are compared with REST's for the same frame.
    # Region passes (the default) are tested in test_stream_roi.py.
    server = LiveServer(
        server_settings(tiny_checkpoint, stream_max_fps=1000.0, stream_redetect_every=1)
    ).start()
    yield server
    server.stop()


def test_frames_answered_in_order_with_stable_track_ids(srv: LiveServer, astronaut: np.ndarray) -> None:
    frames = [jpeg(frame_640x480(np.roll(astronaut, shift, axis=1))) for shift in (0, 4, 8, 12)]

    async def main() -> list[StreamResult]:
        out = []
        async with connect(srv.ws_url) as ws:
            for data in frames:  # lock-step: no drops expected
                await ws.send(data)
                out.append(StreamResult.model_validate(await recv_json(ws)))
        return out

    results = run(main())
    assert [r.frame for r in results] == [0, 1, 2, 3]
    assert all(r.dropped == 0 for r in results)
    assert all(len(r.faces) == 1 and (r.image.width, r.image.height) == (640, 480) for r in results)
    ids = {r.faces[0].track_id for r in results}
    assert len(ids) == 1 and None not in ids  # the moving face keeps its id


def test_flood_drops_older_frames_and_accounts_for_all(srv: LiveServer, astronaut: np.ndarray) -> None:
    data = jpeg(frame_640x480(astronaut))
    sent = 40
    # all reasons: on a slow machine the burst also trips the per-stream fps cap ("rate_limit")
    before = srv.metric("emotion_stream_dropped_frames_total")

    async def main() -> list[dict[str, Any]]:
        replies = []
        async with connect(srv.ws_url) as ws:
            for _ in range(sent):  # far faster than the model can go
                await ws.send(data)
            while not replies or replies[-1]["frame"] != sent - 1:
                replies.append(await recv_json(ws))
        return replies

    replies = run(main())
    frames = [r["frame"] for r in replies]
    assert frames == sorted(set(frames))  # strictly increasing
    assert frames[-1] == sent - 1  # the newest frame always wins
    dropped = sum(r["dropped"] for r in replies)
    assert dropped > 0 and dropped + len(replies) == sent  # every frame answered or counted
    # each reply counts the frames skipped before it, not those dropped while it was answered
    previous = [-1, *frames[:-1]]
    assert [r["dropped"] for r in replies] == [f - p - 1 for p, f in zip(previous, frames, strict=True)]
    assert srv.metric("emotion_stream_dropped_frames_total") - before == dropped


def test_smoothing_and_options_by_control_message(srv: LiveServer, astronaut: np.ndarray) -> None:
    a = frame_640x480(astronaut)
    b = np.clip(a.astype(np.int16) + 60, 0, 255).astype(np.uint8)  # same face, brighter: other scores
    rest = [
        httpx.post(srv.url + "/v1/predict", content=jpeg(x)).json()["faces"][0]["emotions"] for x in (a, b)
    ]
    pa, pb = (np.array(list(e.values())) for e in rest)

    async def main() -> list[dict[str, Any]]:
        out = []
        async with connect(srv.ws_url) as ws:
            await ws.send(json.dumps({"smoothing": 0.75}))
            for x in (a, b):
                await ws.send(jpeg(x))
                out.append(await recv_json(ws))
            await ws.send(json.dumps({"smoothing": 0.0, "detect": False}))
            await ws.send(jpeg(b))
            out.append(await recv_json(ws))
            await ws.send(json.dumps({"smoothing": 2}))  # invalid: an error message, the stream goes on
            out.append(await recv_json(ws))
            await ws.send(jpeg(a))
            out.append(await recv_json(ws))
        return out

    first, second, whole, err, after = run(main())
    s1 = np.array(list(first["faces"][0]["emotions"].values()))
    s2 = np.array(list(second["faces"][0]["emotions"].values()))
    assert np.allclose(s1, pa, atol=1e-4)
    assert np.allclose(s2, 0.75 * pa + 0.25 * pb, atol=1e-4)  # EMA of this track's scores
    assert first["faces"][0]["track_id"] == second["faces"][0]["track_id"]
    assert whole["faces"][0]["box"] == {"x": 0, "y": 0, "w": 640, "h": 480}
    assert err["error"]["code"] == "invalid_control" and "smoothing" in err["error"]["message"]
    assert after["frame"] == 3


def test_control_message_over_4096_bytes_is_refused_unparsed(srv: LiveServer) -> None:
    valid = '{"smoothing": 0.5' + " " * 1000 + "\u20ac" * 1500 + "}"  # 2518 characters, 5518 bytes
    assert len(valid) < 4096 < len(valid.encode())

    async def main() -> list[dict[str, Any]]:
        async with connect(srv.ws_url) as ws:
            out = []
            for text in (valid, "x" * 5000):
                await ws.send(text)
                out.append(await recv_json(ws))
        return out

    by_bytes, by_chars = run(main())
    assert by_bytes["error"] == {
        "code": "invalid_control",
        "message": "control message of 5518 bytes; the limit is 4096 bytes",
    }
    assert by_chars["error"]["message"] == "control message of 5000 characters; the limit is 4096 bytes"


def test_multi_face_stream(srv: LiveServer, astronaut: np.ndarray) -> None:
    async def main() -> dict[str, Any]:
        async with connect(srv.ws_url) as ws:
            await ws.send(jpeg(faces_canvas(astronaut)))
            return await recv_json(ws)

    reply = run(main())
    ids = [f["track_id"] for f in reply["faces"]]
    assert len(ids) == 3 and len(set(ids)) == 3
    areas = [f["box"]["w"] * f["box"]["h"] for f in reply["faces"]]
    assert areas == sorted(areas, reverse=True)


@pytest.mark.parametrize(
    ("payload", "code", "words"),
    [
        (encode(np.zeros((8, 8, 3), np.uint8), "PNG"), 1003, "not a JPEG"),
        (b"\xff\xd8\xff" + b"garbage" * 10, 1003, "frame 0"),
        (jpeg_claiming(9000, 9000), 1009, "pixels"),
        (b"\xff\xd8\xff" + b"\0" * (10 * MiB), 1009, "limit"),
    ],
    ids=["png", "corrupt-jpeg", "too-many-pixels", "too-many-bytes"],
)
def test_bad_frames_close_the_stream(srv: LiveServer, payload: bytes, code: int, words: str) -> None:
    async def main() -> tuple[int, str]:
        async with connect(srv.ws_url) as ws:
            await ws.send(payload)
            return await close_code(ws)

    got, reason = run(main())
    assert got == code and words in reason


def test_unknown_websocket_path_is_refused(srv: LiveServer) -> None:
    async def main() -> None:
        with pytest.raises(Exception, match=r"403|404"):
            async with connect(srv.ws_url.replace("/v1/stream", "/v1/nope")):
                pass

    run(main())
