"""Issue 15 on the WebSocket: control-message size and error-reply length, idle streams, Origin
checking, API keys in the log after URL-decoding; and issue 12's "newest wins, always" under
the per-stream frame cap. Real server, real WebSocket clients.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from server_harness import LiveServer, close_code, frame_640x480, jpeg, recv_json, retry, run, server_settings
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from shared.protocol import ErrorBody, StreamResult

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from hardening import many_scan_jpeg

IDLE_S = 1.5
FPS = 5.0
KEY = "stream-key-0123456789"


@pytest.fixture(scope="module")
def srv(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    settings = server_settings(
        tiny_checkpoint,
        stream_max_fps=FPS,
        stream_idle_timeout_s=IDLE_S,
        cors_origins="http://app.example",
        api_keys=KEY,
        log_level="debug",
    )
    server = LiveServer(settings).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def frame(astronaut: np.ndarray) -> bytes:
    return jpeg(frame_640x480(astronaut), quality=70)


def ws_url(srv: LiveServer) -> str:
    return f"{srv.ws_url}?api_key={KEY}"


# ----------------------------------------------------------------------------- 5. control messages


def test_a_huge_control_message_gets_a_short_error(srv: LiveServer, frame: bytes) -> None:
    """Was: 7.6 MiB of unknown fields got a 31 MB invalid_control reply and stalled /healthz."""
    text = json.dumps({f"f{i}": 0 for i in range(800_000)})

    async def main() -> tuple[str, dict[str, Any], float]:
        async with connect(ws_url(srv), max_size=None) as ws:
            start = time.monotonic()
            await ws.send(text)
            err = await asyncio.wait_for(ws.recv(), 20)
            elapsed = time.monotonic() - start
            await ws.send(frame)
            return str(err), await recv_json(ws), elapsed

    err, reply, elapsed = run(main())
    assert len(text) > 7 * 1024 * 1024
    assert len(err) < 1024, f"a {len(err)}-byte error reply"
    assert ErrorBody.model_validate_json(err).error.code == "invalid_control"
    assert StreamResult.model_validate(reply).frame == 0
    assert elapsed < 1.0


def test_an_error_reply_is_short_even_for_a_small_bad_message(srv: LiveServer) -> None:
    text = json.dumps({f"u{i}": [] for i in range(200)})  # 2.6 KB, 200 validation errors

    async def main() -> str:
        async with connect(ws_url(srv)) as ws:
            await ws.send(text)
            return str(await asyncio.wait_for(ws.recv(), 20))

    err = run(main())
    assert len(err) < 1024, f"a {len(err)}-byte error reply"
    assert "u0" in ErrorBody.model_validate_json(err).error.message  # it still says what was wrong


# ----------------------------------------------------------------------------- 7. idle streams


def test_a_stream_that_sends_no_frame_is_closed(srv: LiveServer) -> None:
    """Was: 16 idle sockets held every slot; the 17th client got 1013."""

    async def main() -> tuple[tuple[int, str], float]:
        async with connect(ws_url(srv)) as ws:
            start = time.monotonic()
            return await close_code(ws, timeout=IDLE_S + 5), time.monotonic() - start

    (code, reason), elapsed = run(main())
    assert code == 4408 and "no frame" in reason
    assert IDLE_S - 0.2 <= elapsed < IDLE_S + 1.5
    assert retry(lambda: srv.metric("emotion_active_streams") == 0)


def test_a_stream_that_keeps_sending_is_not_idle(srv: LiveServer, frame: bytes) -> None:
    async def main() -> list[int]:
        frames = []
        async with connect(ws_url(srv)) as ws:
            for _ in range(5):
                await ws.send(frame)
                frames.append((await recv_json(ws))["frame"])
                await asyncio.sleep(IDLE_S * 0.6)  # 3 s in all, twice the idle timeout
        return frames

    assert run(main()) == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------- Origin


def test_a_cross_site_page_cannot_open_a_stream(srv: LiveServer, frame: bytes) -> None:
    async def attempt(origin: str | None) -> tuple[int, str] | int:
        headers = {"Origin": origin} if origin else {}
        async with connect(ws_url(srv), additional_headers=headers) as ws:
            try:
                await ws.send(frame)
                return int((await recv_json(ws))["frame"])
            except ConnectionClosed as exc:
                assert exc.rcvd is not None
                return exc.rcvd.code, exc.rcvd.reason

    port = srv.port
    assert run(attempt("http://evil.example")) == (1008, "origin not allowed")
    assert run(attempt(None)) == 0  # not a browser: no Origin
    assert run(attempt(f"http://127.0.0.1:{port}")) == 0  # the server's own page
    assert run(attempt("http://app.example")) == 0  # listed in EMOTION_CORS_ORIGINS


# ----------------------------------------------------------------------------- 6. keys in the log


@pytest.mark.parametrize("name", ["api%5Fkey", "%61pi_key", "api%5fkey"])
def test_an_encoded_key_parameter_is_masked_in_the_log(
    srv: LiveServer, frame: bytes, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> int:
        async with connect(f"{srv.ws_url}?{name}={KEY}") as ws:
            await ws.send(frame)
            return int((await recv_json(ws))["frame"])

    assert run(main()) == 0  # it authenticates, as starlette decodes parameter names
    httpx.get(f"{srv.url}/v1/info?{name}={KEY}")
    client_side = ("httpx", "httpcore", "websockets.client")
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(client_side))
    assert "/v1/stream" in text and "/v1/info" in text
    assert KEY not in text


# ----------------------------------------------------------------------------- issue 12: newest wins


def test_newest_frame_wins_under_the_fps_cap(srv: LiveServer, frame: bytes) -> None:
    """Was: frames over the cap were dropped on arrival, so after a burst of 300 the last reply
    was frame 269. The cap now bounds how often a stream is processed; the newest frame received
    is the one answered next, and every frame is answered or counted as dropped."""
    sent = 300

    async def main() -> tuple[list[dict[str, Any]], float]:
        replies: list[dict[str, Any]] = []
        async with connect(ws_url(srv)) as ws:
            start = time.monotonic()
            for _ in range(sent):
                await ws.send(frame)
            while not replies or replies[-1]["frame"] != sent - 1:
                replies.append(await recv_json(ws, timeout=10))
            return replies, time.monotonic() - start

    replies, elapsed = run(main())
    frames = [r["frame"] for r in replies]
    assert frames[-1] == sent - 1 and frames == sorted(set(frames))
    assert len(replies) + sum(r["dropped"] for r in replies) == sent
    assert len(replies) <= FPS * elapsed + 3  # the cap holds (2 frames of burst allowance)


# ----------------------------------------------------------------------------- 7. one client, all slots


def test_one_client_cannot_take_every_slot(tiny_checkpoint: Path, frame: bytes) -> None:
    keys = ("client-one-0123456789", "client-two-0123456789")
    settings = server_settings(
        tiny_checkpoint, api_keys=",".join(keys), max_streams=4, max_streams_per_client=2
    )
    server = LiveServer(settings).start()

    def url(key: str) -> str:
        return f"{server.ws_url}?api_key={key}"

    async def main() -> tuple[tuple[int, str], int]:
        async with connect(url(keys[0])), connect(url(keys[0])):
            assert retry(lambda: server.metric("emotion_active_streams") == 2)
            async with connect(url(keys[0])) as third:
                refused = await close_code(third)
            async with connect(url(keys[1])) as other:  # another client still gets a slot
                await other.send(frame)
                return refused, int((await recv_json(other))["frame"])

    try:
        refused, answered = run(main())
    finally:
        server.stop()
    assert refused == (1013, "client at its limit of 2 streams; try again later")
    assert answered == 0


# ----------------------------------------------------------------------------- 3, 4: frames


def test_stream_frames_get_the_same_decode_limits(srv: LiveServer) -> None:
    """A frame with thousands of scans closes with 1009, one 4000x1 with 1003, both before decoding."""
    many_scans = many_scan_jpeg(3000, 2000, 2000)
    sliver = jpeg(np.zeros((1, 4000, 3), np.uint8))

    async def send(data: bytes) -> tuple[tuple[int, str], float]:
        async with connect(ws_url(srv)) as ws:
            start = time.monotonic()
            await ws.send(data)
            return await close_code(ws), time.monotonic() - start

    (code, reason), elapsed = run(send(many_scans))
    assert code == 1009 and "scans" in reason and elapsed < 2.0
    (code, reason), _ = run(send(sliver))
    assert code == 1003 and "aspect" in reason
