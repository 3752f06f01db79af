"""API keys on every route: REST by header, the WebSocket by header or query; probes stay open."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_harness import LiveServer, close_code, recv_json, run, server_settings
from websockets.asyncio.client import connect

from shared.protocol import ErrorBody

KEYS = ("k3y-alpha-0123456789", "k3y-bravo-9876543210")


@pytest.fixture(scope="module")
def srv(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    server = LiveServer(server_settings(tiny_checkpoint, api_keys=",".join(KEYS))).start()
    yield server
    server.stop()


GOOD = [
    {"Authorization": f"Bearer {KEYS[0]}"},
    {"X-API-Key": KEYS[1]},
    {"authorization": f"bearer {KEYS[1]}"},
]
BAD = [
    {},
    {"Authorization": "Bearer nope-nope-nope"},
    {"X-API-Key": KEYS[0][:-1]},
    {"Authorization": KEYS[0]},
]


@pytest.mark.parametrize("path", ["/v1/info", "/metrics"])
def test_get_routes_need_a_key(srv: LiveServer, path: str) -> None:
    for headers in BAD:
        resp = httpx.get(srv.url + path, headers=headers)
        assert resp.status_code == 401
        assert ErrorBody.model_validate_json(resp.content).error.code == "unauthorized"
        assert resp.headers["www-authenticate"] == "Bearer"
    for headers in GOOD:
        assert httpx.get(srv.url + path, headers=headers).status_code == 200


def test_predict_needs_a_key_before_anything_else(srv: LiveServer, astronaut_jpeg: bytes) -> None:
    url = srv.url + "/v1/predict"
    for headers in BAD:
        assert httpx.post(url, content=astronaut_jpeg, headers=headers).status_code == 401
        assert httpx.post(url + "?max_faces=0", content=b"junk", headers=headers).status_code == 401
    for headers in GOOD:
        assert httpx.post(url, content=astronaut_jpeg, headers=headers).status_code == 200
    assert (
        httpx.post(url, content=astronaut_jpeg, params={"api_key": KEYS[0]}).status_code == 401
    )  # REST: headers only


def test_probes_and_page_stay_open(srv: LiveServer) -> None:
    for path in ("/healthz", "/readyz", "/"):
        assert httpx.get(srv.url + path).status_code == 200


def test_websocket_key_by_header_or_query(
    srv: LiveServer, astronaut_jpeg: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def with_key(url: str, headers: dict[str, str]) -> int:
        async with connect(url, additional_headers=headers) as ws:
            await ws.send(astronaut_jpeg)
            return int((await recv_json(ws))["frame"])

    async def refused(url: str, headers: dict[str, str]) -> tuple[int, str]:
        async with connect(url, additional_headers=headers) as ws:
            return await close_code(ws)

    caplog.set_level(logging.INFO, logger="uvicorn.error")  # where uvicorn logs handshakes
    for headers in GOOD:
        assert run(with_key(srv.ws_url, headers)) == 0
    assert run(with_key(f"{srv.ws_url}?api_key={KEYS[1]}", {})) == 0
    for headers in BAD:
        code, reason = run(refused(srv.ws_url, headers))
        assert code == 1008 and "API key" in reason
    assert run(refused(f"{srv.ws_url}?api_key=wrong-key-123", {}))[0] == 1008
    assert "api_key=***" in caplog.text  # the handshake was logged, masked
    assert all(key not in caplog.text for key in KEYS)  # keys never reach the logs
