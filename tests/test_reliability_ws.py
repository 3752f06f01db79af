"""Hostile WebSocket clients on a real server: wrong message types, bad JSON, oversized messages,
a client that never reads, abrupt disconnects, a 1000-frame flood, and too many connections.

Some clients here speak raw RFC 6455 over a socket, so they can do what a library would not:
stop reading, or vanish halfway through a frame.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from server_harness import (
    LiveServer,
    close_code,
    faces_canvas,
    frame_640x480,
    jpeg,
    recv_json,
    retry,
    run,
    server_settings,
)
from websockets.asyncio.client import connect

from shared.protocol import ErrorBody, StreamResult

MiB = 1024 * 1024
BODY_LIMIT = 1 * MiB
MAX_STREAMS = 3
PING_S = 1.0  # keepalive ping interval and timeout for the stalled client (uvicorn's default: 20 s)


@pytest.fixture(scope="module")
def srv(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    settings = server_settings(
        tiny_checkpoint, stream_max_fps=1000.0, max_streams=MAX_STREAMS, max_body_bytes=BODY_LIMIT
    )
    server = LiveServer(settings).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def no_stream_left(srv: LiveServer) -> Iterator[None]:
    yield
    assert retry(lambda: srv.metric("emotion_active_streams") == 0), "a stream outlived its client"


# ----------------------------------------------------------------------------- a raw client


def ws_frame(payload: bytes, opcode: int = 2, fin: bool = True) -> bytes:
    """One masked client frame (RFC 6455 5.2)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    mask = os.urandom(4)
    masked = (np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes()
    return head + mask + masked


def raw_connect(srv: LiveServer, rcvbuf: int | None = None) -> socket.socket:
    """A socket that has completed the WebSocket handshake on /v1/stream."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", srv.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def reset(sock: socket.socket) -> None:
    """Vanish: close with an RST, no WebSocket or TCP goodbye."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def server_ws_protocols(srv: LiveServer) -> list[Any]:
    return [c for c in srv.server.server_state.connections if hasattr(c, "writable")]


# ----------------------------------------------------------------------------- messages


@pytest.fixture(scope="module")
def frame(astronaut: np.ndarray) -> bytes:
    return jpeg(frame_640x480(astronaut), quality=70)


BAD_CONTROLS = [
    pytest.param("{", id="truncated-json"),
    pytest.param("[]", id="array"),
    pytest.param("null", id="null"),
    pytest.param('"smoothing"', id="string"),
    pytest.param('{"smoothing": "high"}', id="wrong-type"),
    pytest.param('{"smoothing": NaN}', id="nan"),
    pytest.param('{"max_faces": 1e309}', id="huge-number"),
    pytest.param('{"unknown": 1}', id="unknown-field"),
    pytest.param('{"max_faces": true}', id="bool-as-int"),  # was taken as max_faces=1
    pytest.param('{"detect": "no"}', id="string-as-bool"),  # was taken as detect=false
    pytest.param('{"smoothing": "0.5"}', id="string-as-number"),
    pytest.param("[" * 100_000 + "]" * 100_000, id="deeply-nested"),
    pytest.param(" " * (BODY_LIMIT - 10), id="near-limit-whitespace"),
]


@pytest.mark.parametrize("text", BAD_CONTROLS)
def test_bad_text_messages_get_an_error_and_the_stream_goes_on(
    srv: LiveServer, frame: bytes, text: str
) -> None:
    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        async with connect(srv.ws_url, max_size=None) as ws:
            await ws.send(text)
            err = await recv_json(ws)
            await ws.send(frame)
            return err, await recv_json(ws)

    err, reply = run(main())
    assert ErrorBody.model_validate(err).error.code == "invalid_control"
    assert StreamResult.model_validate(reply).frame == 0  # text is not a frame; the stream carries on


def test_a_jpeg_sent_as_text_is_a_bad_control_not_a_frame(srv: LiveServer, frame: bytes) -> None:
    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        async with connect(srv.ws_url) as ws:
            await ws.send(base64.b64encode(frame).decode())
            err = await recv_json(ws)
            await ws.send(frame)
            return err, await recv_json(ws)

    err, reply = run(main())
    assert err["error"]["code"] == "invalid_control" and reply["frame"] == 0


def test_invalid_utf8_text_closes_with_1007(srv: LiveServer) -> None:
    sock = raw_connect(srv)
    sock.sendall(ws_frame(b"\xff\xfe{}", opcode=1))
    data = b""
    while len(data) < 4:  # the close frame: 0x88, length, 2-byte code
        chunk = sock.recv(64)
        if not chunk:
            break
        data += chunk
    sock.close()
    assert data[0] == 0x88 and struct.unpack(">H", data[2:4])[0] == 1007


@pytest.mark.parametrize("kind", ["binary", "text"])
def test_a_message_over_the_transport_limit_closes_with_1009(srv: LiveServer, kind: str) -> None:
    """Frames over EMOTION_MAX_BODY_BYTES are refused by the app (test_server_stream); past the
    transport's limit (body limit + 1 MiB) uvicorn closes before buffering the message."""
    payload = b"\xff\xd8\xff" + b"\0" * (BODY_LIMIT + 2 * MiB)

    async def main() -> tuple[int, str]:
        async with connect(srv.ws_url, max_size=None) as ws:
            await ws.send(payload if kind == "binary" else payload.decode("latin-1"))
            return await close_code(ws)

    code, _ = run(main())
    assert code == 1009


# ----------------------------------------------------------------------------- slow and vanishing clients


def test_a_client_that_never_reads_is_backpressured_then_dropped(
    srv: LiveServer, astronaut: np.ndarray
) -> None:
    """Replies pile up in the kernel, then in the server's transport buffer up to its high-water
    mark; then the stream stops answering (its reader keeps only the newest frame) instead of
    buffering, and once keepalive pings go unanswered the connection is aborted and its slot freed."""
    many_faces = jpeg(faces_canvas(astronaut, (100,) * 6), quality=40)  # long replies fill buffers sooner
    sock = raw_connect(srv, rcvbuf=4096)
    assert retry(lambda: len(server_ws_protocols(srv)) == 1)
    (proto,) = server_ws_protocols(srv)
    # Small buffers, kernel and transport: the paused state within seconds, not a minute.
    proto.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    proto.transport.set_write_buffer_limits(high=4096)
    proto.stop_keepalive()  # pings start once the server is stuck, so a slow machine cannot race them
    sock.setblocking(False)
    start, sent, pending, paused_at, closed_at, peak = time.monotonic(), 0, b"", None, None, 0
    while time.monotonic() - start < 60 and closed_at is None:
        if not pending:
            pending, sent = ws_frame(many_faces), sent + 1
        with contextlib.suppress(OSError):  # BlockingIOError: try again; others: the server reset us
            pending = pending[sock.send(pending) :]
        peak = max(peak, proto.transport.get_write_buffer_size())
        if paused_at is None and not proto.writable.is_set():
            paused_at = time.monotonic()
            proto.ping_interval = proto.ping_timeout = PING_S
            proto.start_keepalive()
        if proto.disconnected:
            closed_at = time.monotonic()
        time.sleep(0.01)
    sock.close()
    assert paused_at is not None, "the server never stopped writing to a client that does not read"
    assert peak < 64 * 1024, f"server buffered {peak} bytes for one stalled client"
    assert closed_at is not None, "the stalled connection is still open"
    assert closed_at - paused_at < 2 * PING_S + 2  # one unanswered ping, then the abort
    assert sent > 20  # the client kept sending while stalled; the server kept reading (newest wins)


def test_a_client_that_pings_without_reading_the_pongs_is_dropped(srv: LiveServer) -> None:
    """Pongs are written by the protocol, past the app's backpressure: a client that floods pings
    and never reads made the server buffer every pong (hundreds of MB in seconds, on any
    connection, even one refused for a bad key). Past a bound the connection is aborted."""
    sock = raw_connect(srv, rcvbuf=4096)
    assert retry(lambda: len(server_ws_protocols(srv)) == 1)
    (proto,) = server_ws_protocols(srv)
    proto.stop_keepalive()  # the bound, not an unanswered keepalive ping, must end it
    pings = ws_frame(b"p" * 125, opcode=0x9) * 1000
    sock.setblocking(False)
    start, sent, peak, pending = time.monotonic(), 0, 0, b""
    while time.monotonic() - start < 20 and not proto.disconnected and sent < 256 * MiB:
        pending = pending or pings
        try:
            n = sock.send(pending)
            sent, pending = sent + n, pending[n:]
        except BlockingIOError:
            pass
        except OSError:  # reset: the server dropped us
            break
        with contextlib.suppress(RuntimeError):  # the loop thread may be closing the transport
            peak = max(peak, proto.transport.get_write_buffer_size())
    dropped = retry(lambda: proto.disconnected, timeout=2.0)
    sock.close()
    assert dropped, f"still open after {sent} bytes of pings"
    assert peak < 4 * MiB, f"server buffered {peak} bytes of pongs for a client that does not read"


@pytest.mark.parametrize("when", ["mid-header", "mid-payload", "after-frame"])
def test_abrupt_disconnect_leaves_nothing_behind(
    srv: LiveServer, frame: bytes, when: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    errors_before = srv.metric("emotion_errors_total")
    sock = raw_connect(srv)
    assert retry(lambda: srv.metric("emotion_active_streams") == 1)
    data = ws_frame(frame)
    sock.sendall({"mid-header": data[:3], "mid-payload": data[: len(data) // 2], "after-frame": data}[when])
    if when == "after-frame":
        time.sleep(0.05)  # the frame is being decoded or inferred when the client vanishes
    reset(sock)
    assert retry(lambda: srv.metric("emotion_active_streams") == 0)
    assert srv.metric("emotion_errors_total") == errors_before  # leaving is not an error
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


# ----------------------------------------------------------------------------- floods and limits


def rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


def test_1000_frames_as_fast_as_possible(srv: LiveServer, frame: bytes) -> None:
    sent = 1000
    before = srv.metric("emotion_stream_dropped_frames_total")
    gc.collect()
    rss_before = rss_mb()

    async def main() -> tuple[list[dict[str, Any]], float]:
        replies: list[dict[str, Any]] = []
        async with connect(srv.ws_url) as ws:
            for _ in range(sent):
                await ws.send(frame)
            sent_at = time.monotonic()
            while not replies or replies[-1]["frame"] != sent - 1:
                replies.append(await recv_json(ws))
        return replies, time.monotonic() - sent_at

    replies, drain_s = run(main(), timeout=120)
    frames = [r["frame"] for r in replies]
    dropped = sum(r["dropped"] for r in replies)
    assert frames == sorted(set(frames)) and frames[-1] == sent - 1  # increasing; the newest wins
    assert len(replies) + dropped == sent  # every frame answered or counted
    assert len(replies) < sent // 4  # the backlog was dropped, not queued
    assert drain_s < 10  # after the flood only the one pending frame is left to answer
    assert srv.metric("emotion_stream_dropped_frames_total") - before == dropped
    gc.collect()
    assert rss_mb() - rss_before < 50


def test_more_streams_than_the_limit_are_refused_and_the_rest_keep_working(
    srv: LiveServer, frame: bytes
) -> None:
    async def main() -> tuple[list[tuple[int, str]], list[int], int]:
        async with connect(srv.ws_url) as a, connect(srv.ws_url) as b, connect(srv.ws_url) as c:
            assert retry(lambda: srv.metric("emotion_active_streams") == MAX_STREAMS)

            async def extra() -> tuple[int, str]:
                async with connect(srv.ws_url) as ws:
                    return await close_code(ws)

            refused = await asyncio.gather(*(extra() for _ in range(10)))
            frames = []
            for ws in (a, b, c):  # the admitted streams are unaffected
                await ws.send(frame)
                frames.append((await recv_json(ws))["frame"])
            await c.close()
        await asyncio.sleep(0.2)
        async with connect(srv.ws_url) as again:  # a freed slot is usable again
            await again.send(frame)
            reused = (await recv_json(again))["frame"]
        return refused, frames, reused

    refused, frames, reused = run(main())
    assert all(code == 1013 and f"limit of {MAX_STREAMS} streams" in reason for code, reason in refused)
    assert frames == [0, 0, 0] and reused == 0


def test_a_reply_is_json_text_even_after_garbage(srv: LiveServer, frame: bytes) -> None:
    """Interleaved garbage and frames: every reply parses, frames keep their arrival numbering."""

    async def main() -> list[Any]:
        out = []
        async with connect(srv.ws_url) as ws:
            for i in range(3):
                await ws.send("{oops")
                out.append(json.loads(await ws.recv()))
                await ws.send(frame)
                out.append(json.loads(await ws.recv()))
                assert out[-1]["frame"] == i
        return out

    replies = run(main())
    assert [("error" in r) for r in replies] == [True, False] * 3
