"""Short runs of bench/faults.py: slow clients (slowloris) and a SIGKILL + restart under load.

The full-size runs and their numbers are in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_harness import LiveServer, jpeg, server_settings
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
faults: Any = importlib.import_module("faults")

HEADER_S, BODY_S = 1.0, 2.0


@pytest.fixture(scope="module")
def srv(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    settings = server_settings(tiny_checkpoint, header_timeout_s=HEADER_S, body_timeout_s=BODY_S)
    server = LiveServer(settings).start()
    yield server
    server.stop()


def test_slow_clients_are_cut_off_while_others_are_served(srv: LiveServer, astronaut: Any) -> None:
    conns, _, during = asyncio.run(
        faults.slowloris_against(srv.url, srv.port, jpeg(astronaut), 30, HEADER_S, BODY_S, warm_s=0.5)
    )
    report = faults.slowloris_report(conns, during, during, HEADER_S, BODY_S)
    assert all(report["checks"].values()), report
    assert len(srv.server.server_state.connections) <= 1  # none of the slow ones is left


def test_body_timeout_is_a_408_error_body_and_closes_the_connection(srv: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(faults.HEAD + b"\xff\xd8\xff")  # promises 100000 bytes, sends 3
        t0 = time.monotonic()
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
        elapsed = time.monotonic() - t0
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower()
    assert b'"code":"request_timeout"' in body
    assert BODY_S - 0.1 <= elapsed < BODY_S + 1.5


def test_a_websocket_upgrade_is_not_cut_by_the_head_timeout(srv: LiveServer, astronaut: Any) -> None:
    async def main() -> int:
        async with connect(srv.ws_url) as ws:
            await asyncio.sleep(HEADER_S + 0.5)  # longer than the head deadline
            await ws.send(jpeg(astronaut))
            return int(json.loads(await ws.recv())["frame"])

    assert asyncio.run(asyncio.wait_for(main(), 30)) == 0


def test_an_idle_keep_alive_connection_is_not_cut_by_the_head_timeout(srv: LiveServer) -> None:
    """Between requests uvicorn's keep-alive timeout (5 s) applies; the head deadline starts
    again with the next request's first byte."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            time.sleep(HEADER_S * 1.5)


@pytest.mark.slow
def test_sigkill_and_restart_under_load(tiny_checkpoint: Path) -> None:
    result = faults.kill_restart(
        clients=2, fps=5.0, down_s=1.0, env={"EMOTION_CHECKPOINT": str(tiny_checkpoint)}, settle_s=1.0
    )
    assert all(result["checks"].values()), result
