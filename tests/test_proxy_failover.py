"""Two replicas behind nginx (deploy/nginx/emotion-service.conf): one is SIGKILLed under load.

A short run of bench/proxy_failover.py (the full run's table is in docs/reliability.md). Skips
when nginx is not installed (Debian: apt-get install nginx; .ci/run installs it).
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
failover: Any = importlib.import_module("proxy_failover")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(failover.nginx_binary() is None, reason="nginx is not installed"),
]


def test_rest_and_streams_survive_a_replica_kill(tiny_checkpoint: Path, astronaut_jpeg: bytes) -> None:
    r = failover.run(
        warm=3.0,
        after=5.0,
        rest_clients=2,
        streams=2,
        env={"EMOTION_CHECKPOINT": str(tiny_checkpoint), "EMOTION_WARMUP": "false"},
        jpeg=astronaut_jpeg,
    )
    # REST spread across both replicas while both were up, and kept answering through the survivor.
    assert r["rest_spread"].get("killed replica", 0) > 0 and r["rest_spread"].get("survivor", 0) > 0, r
    assert r["rest_before"]["failed"] == 0 and r["rest_after"]["failed"] == 0, r
    assert r["rest_after"]["ok"] > 0, r
    assert set(r["rest_spread_after"]) == {"survivor"}, r
    # Streams were pinned (each on one connection); those on the dead replica reconnected through
    # the proxy and were answered again, and none gave up.
    assert r["streams_on_victim"] >= 1 and r["reconnects"] >= r["streams_on_victim"], r
    assert not r["stream_errors"], r
    assert all(0 < s < 10 for s in r["recovery_s"]), r
    assert r["stream_replies_after"] > 0, r
    assert r["hung_clients"] == 0, r


def test_a_browser_page_streams_through_the_proxy(
    tiny_checkpoint: Path, astronaut_jpeg: bytes, tmp_path: Path
) -> None:
    """A browser's stream carries Origin: the proxy's own address (host and port). The server lets it
    in only when the Host it sees names the same, so every location must forward Host with its port
    (a location's own proxy_set_header lines drop the server level's)."""
    env = {"EMOTION_CHECKPOINT": str(tiny_checkpoint), "EMOTION_WARMUP": "false"}
    replica = failover.ServerProcess(env=env, log_path=tmp_path / "replica.log").start(timeout=120)
    proxy: Any = None
    try:
        proxy = failover.Nginx([replica.port, replica.port], tmp_path).start()
        ws_url = proxy.url.replace("http://", "ws://") + "/v1/stream"
        with connect(ws_url, origin=proxy.url, open_timeout=10) as ws:
            ws.send(astronaut_jpeg)
            reply = json.loads(ws.recv(timeout=30))
    finally:
        if proxy is not None:
            proxy.stop()
        replica.stop()
    assert reply.get("type") == "result", f"the stream was refused through the proxy: {reply}"


PREFIX_SITE = """
server {{
  listen 127.0.0.1:{port};
  location /emotion/ {{
    proxy_pass http://127.0.0.1:{backend}/;
    proxy_http_version 1.1;
    proxy_set_header Host $http_host;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection "upgrade";
  }}
}}
"""


def test_under_a_path_prefix_the_api_docs_and_stream_work(
    tiny_checkpoint: Path, astronaut_jpeg: bytes, tmp_path: Path
) -> None:
    """nginx serves the server under /emotion/ and strips it; with EMOTION_ROOT_PATH=/emotion, /docs
    and /redoc fetch their assets and the API description from under the prefix too (they are the
    only absolute URLs the server writes: the page and its stream use relative ones)."""
    import httpx

    env = {
        "EMOTION_CHECKPOINT": str(tiny_checkpoint),
        "EMOTION_WARMUP": "false",
        "EMOTION_ROOT_PATH": "/emotion",
    }
    replica = failover.ServerProcess(env=env, log_path=tmp_path / "replica.log").start(timeout=120)
    proxy: Any = None
    try:
        proxy = failover.Nginx([replica.port], tmp_path, site=PREFIX_SITE).start()
        base = proxy.url + "/emotion"
        for page in ("/docs", "/redoc"):
            html = httpx.get(base + page).text
            urls = re.findall(r'(?:src|href|url)[=:] *["\']([^"\']+)["\']', html)
            local = [u for u in urls if u.startswith("/")]
            assert local and all(u.startswith("/emotion/") for u in local), (page, urls)
            for u in local:
                assert httpx.get(proxy.url + u).status_code == 200, u
        assert httpx.get(base + "/openapi.json").json()["paths"]
        predicted = httpx.post(
            base + "/v1/predict", content=astronaut_jpeg, headers={"content-type": "image/jpeg"}
        )
        assert predicted.status_code == 200 and predicted.json()["faces"], predicted.text
        page = httpx.get(base + "/")
        assert page.status_code == 200 and "app.js" in page.text
        with connect(base.replace("http://", "ws://") + "/v1/stream", open_timeout=10) as ws:
            ws.send(astronaut_jpeg)
            assert json.loads(ws.recv(timeout=30)).get("type") == "result"
    finally:
        if proxy is not None:
            proxy.stop()
        replica.stop()
