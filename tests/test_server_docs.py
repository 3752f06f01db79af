"""/docs and /redoc work without internet, and the OpenAPI says how to send a key.

Chromium runs with every host but loopback unresolvable, so a page that needed a CDN would
stay blank; Swagger UI must render the API and its Authorize button from the server alone.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cdp import Chromium, find_chromium
from server_harness import LiveServer, server_settings

from shared.protocol import ErrorBody

pytestmark = pytest.mark.slow
KEY = "docs-test-key-123"


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    with LiveServer(server_settings(tiny_checkpoint, api_keys=[KEY])) as srv:
        yield srv


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_asset_from_the_server(server: LiveServer, page: str) -> None:
    html = httpx.get(server.url + page).text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(a.startswith("/") for a in assets), f"no CDN, only local assets: {assets}"
    assert "cdn" not in html.lower()
    for asset in assets:
        resp = httpx.get(server.url + asset)
        assert resp.status_code == 200 and len(resp.content) > 1000, asset


def test_openapi_declares_the_key_and_points_to_the_websocket_protocol(server: LiveServer) -> None:
    schema: dict[str, Any] = httpx.get(server.url + "/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearer"]["description"],
    }
    assert schemes["apiKey"]["in"] == "header" and schemes["apiKey"]["name"] == "X-API-Key"
    keyed = {("/v1/predict", "post"), ("/v1/info", "get"), ("/metrics", "get")}
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            if (path, method) in keyed:
                assert op["security"] == [{"bearer": []}, {"apiKey": []}], (path, method)
            else:
                assert "security" not in op, f"{method} {path} is open"
    description = schema["info"]["description"]
    assert "docs/protocol.md" in description and "/v1/stream" in description


def _head_timeout_status(srv: LiveServer, method: str, path: str) -> tuple[int, bytes]:
    """A request whose head never ends: the server's own 408 reply, status and body."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(f"{method.upper()} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_errors_any_request_can_get_are_declared_on_every_operation(tiny_checkpoint: Path) -> None:
    """A client generated from /openapi.json meets these on every route, before any route runs:
    headers over 64 KiB (431), a head that does not arrive in time (408), a Host outside
    EMOTION_ALLOWED_HOSTS (400, the probes excepted). Each must be a declared ErrorBody reply."""
    settings = server_settings(tiny_checkpoint, allowed_hosts="127.0.0.1", header_timeout_s=0.3)
    with LiveServer(settings) as srv:
        schema: dict[str, Any] = httpx.get(srv.url + "/openapi.json").json()
        for path, ops in schema["paths"].items():
            for method, op in ops.items():
                replies = {
                    "431": httpx.request(method, srv.url + path, headers={"x-pad": "a" * 70_000}),
                    "408": _head_timeout_status(srv, method, path),
                }
                if path not in ("/healthz", "/readyz"):
                    replies["400"] = httpx.request(method, srv.url + path, headers={"host": "evil.example"})
                for status, reply in replies.items():
                    got, body = (
                        (reply.status_code, reply.content) if isinstance(reply, httpx.Response) else reply
                    )
                    assert str(got) == status, (method, path, got, body)
                    assert status in op["responses"], f"{method} {path}: {status} is not declared"
                    declared = op["responses"][status]["content"]["application/json"]["schema"]
                    assert declared == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
                    ErrorBody.model_validate_json(body)


def test_swagger_ui_renders_offline_with_an_authorize_button(server: LiveServer, tmp_path: Path) -> None:
    exe = find_chromium()
    if exe is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    offline = ("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",)
    browser = Chromium(exe, None, tmp_path / "profile", extra_args=offline)
    try:
        browser.send("Page.navigate", url=server.url + "/docs")
        title = browser.wait_for("document.querySelector('.swagger-ui .info .title')?.textContent", 30)
        rendered = browser.evaluate(
            "JSON.stringify({authorize: !!document.querySelector('.swagger-ui .btn.authorize'),"
            " ops: document.querySelectorAll('.swagger-ui .opblock').length,"
            " locks: document.querySelectorAll('.swagger-ui .opblock .authorization__btn').length})"
        )
    finally:
        browser.close()
    assert title and "emotion-service" in title, browser.log_tail()
    assert rendered == '{"authorize":true,"ops":5,"locks":3}', rendered
