"""HTTPS/WSS served by the server itself (EMOTION_SSL_CERTFILE/KEYFILE), with a self-signed certificate
on loopback: REST, the WebSocket stream and emotion-client over TLS; bad TLS settings stop startup."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import ValidationError
from selfsigned import make_cert
from server_harness import LiveServer, frame_640x480, jpeg, recv_json, retry, run, server_settings
from websockets.asyncio.client import connect

from server.cli import main as server_main
from server.config import Settings
from shared.protocol import PredictResponse, StreamResult

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(tiny_checkpoint: Path, cert: tuple[Path, Path]) -> Iterator[LiveServer]:
    settings = server_settings(tiny_checkpoint, ssl_certfile=cert[0], ssl_keyfile=cert[1])
    server = LiveServer(settings)
    server.url = f"https://127.0.0.1:{server.port}"
    server.ws_url = f"wss://127.0.0.1:{server.port}/v1/stream"
    ctx = ssl.create_default_context(cafile=str(cert[0]))
    server.start(wait_ready=False)  # the harness polls over plain http; poll over https here
    with httpx.Client(verify=ctx) as http:
        assert retry(lambda: http.get(server.url + "/readyz").status_code == 200, timeout=120)
    yield server
    server.stop()


def test_rest_and_stream_over_tls(
    tls_server: LiveServer, cert: tuple[Path, Path], astronaut: np.ndarray
) -> None:
    ctx = ssl.create_default_context(cafile=str(cert[0]))
    with httpx.Client(verify=ctx, timeout=60) as http:
        resp = http.post(
            tls_server.url + "/v1/predict", content=jpeg(astronaut), headers={"Content-Type": "image/jpeg"}
        )
        assert resp.status_code == 200 and PredictResponse.model_validate_json(resp.content).faces
    with pytest.raises(httpx.TransportError):  # plain HTTP to the TLS port gets no answer
        httpx.get(f"http://127.0.0.1:{tls_server.port}/healthz", timeout=5)

    async def stream() -> StreamResult:
        async with connect(tls_server.ws_url, ssl=ctx) as ws:
            await ws.send(jpeg(frame_640x480(astronaut)))
            return StreamResult.model_validate(await recv_json(ws))

    assert run(stream()).frame == 0


def test_client_over_https_trusts_a_certificate_given_by_ssl_cert_file(
    tls_server: LiveServer, cert: tuple[Path, Path], tmp_path: Path, astronaut_jpeg: bytes
) -> None:
    (tmp_path / "a.jpg").write_bytes(astronaut_jpeg)
    env = os.environ | {"SSL_CERT_FILE": str(cert[0])}

    def client(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "client", *args, "--server", tls_server.url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)

    predict = client("predict", str(tmp_path / "a.jpg"))
    assert predict.returncode == 0, predict.stderr
    assert json.loads(predict.stdout)
    stream = client("stream", "--images", str(tmp_path), "--no-display")
    assert stream.returncode == 0, stream.stderr
    assert len(stream.stdout.splitlines()) == 1  # one image, one reply, over wss://
    untrusted = subprocess.run(
        [sys.executable, "-m", "client", "predict", str(tmp_path / "a.jpg"), "--server", tls_server.url],
        capture_output=True, text=True, timeout=60, check=False,
        env={k: v for k, v in os.environ.items() if k != "SSL_CERT_FILE"},
    )  # fmt: skip
    assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr


def test_bad_tls_settings_stop_startup(
    tiny_checkpoint: Path, cert: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certfile, keyfile = cert
    _, other_key = make_cert(tmp_path / "other")
    cases = [
        ({"ssl_certfile": certfile}, "needs both"),
        ({"ssl_keyfile": keyfile}, "needs both"),
        ({"ssl_certfile": tmp_path / "nope.pem", "ssl_keyfile": keyfile}, "does not exist"),
        ({"ssl_certfile": certfile, "ssl_keyfile": other_key}, "cannot load TLS certificate"),  # not a pair
        ({"ssl_certfile": keyfile, "ssl_keyfile": keyfile}, "cannot load TLS certificate"),  # key as cert
    ]
    for overrides, message in cases:
        with pytest.raises(ValidationError, match=message):
            Settings(checkpoint=tiny_checkpoint, device="cpu", **overrides)
    rc = server_main(
        ["--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--ssl-certfile", str(certfile)]
    )
    assert rc == 2 and "ssl_keyfile" in capsys.readouterr().err


def test_empty_tls_variables_mean_no_tls(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docker compose passes unset ${EMOTION_SSL_CERTFILE:-} as an empty string."""
    monkeypatch.setenv("EMOTION_SSL_CERTFILE", "")
    monkeypatch.setenv("EMOTION_SSL_KEYFILE", " ")
    settings = Settings(checkpoint=tiny_checkpoint, device="cpu")
    assert settings.ssl_certfile is None and not settings.tls_enabled
