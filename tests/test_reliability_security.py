"""Security: a key on every route that does work, constant-time key checks, no key in any log
line, and a checkpoint loader that never runs code from the file.

(The container's non-root user is checked in test_server_docker.py; the per-surface key
behaviour, header vs query, in test_server_auth.py.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save_file
from server_harness import LiveServer, close_code, run, server_settings
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import server.deps
from server.app import WEB_DIR
from server.cli import main
from server.deps import key_is_valid
from server.model.checkpoint import META_KEY, CheckpointError, CheckpointMeta, load_checkpoint, read_meta
from shared.emotions import EMOTIONS
from shared.protocol import ErrorBody

REPO = Path(__file__).resolve().parent.parent
KEYS = ("sec-key-alpha-0123456789", "sec-key-bravo-9876543210", "sec-key-charlie-5555555")
WRONG = "sec-key-wrong-0000000000"
#: Open on purpose: probes (orchestrators have no secrets), the page, and the API description.
OPEN = {"/healthz", "/readyz", "/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}


@pytest.fixture(scope="module")
def srv(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    server = LiveServer(server_settings(tiny_checkpoint, api_keys=",".join(KEYS), log_level="debug")).start()
    yield server
    server.stop()


def test_every_route_that_does_work_needs_a_key(srv: LiveServer) -> None:
    """Walks the API description the server publishes, so a route added later without the key
    dependency fails here."""
    paths = httpx.get(srv.url + "/openapi.json").json()["paths"]
    guarded = [(m.upper(), path) for path, ops in paths.items() if path not in OPEN for m in ops]
    assert {("POST", "/v1/predict"), ("GET", "/metrics"), ("GET", "/v1/info")} <= set(guarded)
    for method, path in guarded:
        resp = httpx.request(method, srv.url + path, content=b"\xff\xd8\xff")
        assert resp.status_code == 401, f"{method} {path}: {resp.status_code}"
        assert ErrorBody.model_validate_json(resp.content).error.code == "unauthorized"

    async def refused() -> tuple[int, str]:
        async with connect(srv.ws_url) as ws:
            return await close_code(ws)

    assert run(refused())[0] == 1008  # the one WebSocket route
    page = {"/" + p.relative_to(WEB_DIR).as_posix() for p in WEB_DIR.rglob("*") if p.is_file()}
    for path in OPEN | page:  # and the open ones really are open
        assert httpx.get(srv.url + path).status_code == 200, path


def test_keys_are_compared_in_constant_time_against_every_key(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = server_settings(tiny_checkpoint, api_keys=",".join(KEYS))
    calls: list[tuple[bytes, bytes]] = []
    real = server.deps.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(server.deps.hmac, "compare_digest", spy)
    for key, valid in [(KEYS[0], True), (KEYS[2], True), (WRONG, False), (KEYS[0][:-1], False)]:
        calls.clear()
        assert key_is_valid(settings, key) is valid
        assert len(calls) == len(KEYS)  # no early exit on a match: timing does not say which key
    source = Path(server.deps.__file__).read_text()
    assert not re.search(r"key[^\n]*==|==[^\n]*key", source), "a plain == comparison of keys"


def test_no_key_ever_reaches_the_logs(
    srv: LiveServer, astronaut_jpeg: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, debug and up: uvicorn's access log included
    for logger in ("uvicorn.access", "uvicorn.error", "server"):
        caplog.set_level(logging.DEBUG, logger=logger)  # restored after the test
    url = srv.url + "/v1/predict"
    for key in (*KEYS, WRONG):
        httpx.post(url, content=astronaut_jpeg, headers={"Authorization": f"Bearer {key}"})
        httpx.post(url, content=b"\xff\xd8\xffjunk", headers={"X-API-Key": key})  # an error path too
        httpx.post(url + f"?api_key={key}", content=astronaut_jpeg)  # REST ignores it, but logs the URL
        httpx.get(srv.url + f"/v1/info?api_key={key}&x=1", headers={"X-API-Key": key})

        async def stream(key: str = key) -> None:
            async with connect(f"{srv.ws_url}?api_key={key}") as ws:
                with contextlib.suppress(ConnectionClosed):  # a wrong key is already closed
                    await ws.send(b"not a jpeg")
                await close_code(ws)

        run(stream())
    client_side = ("httpx", "httpcore", "websockets.client")  # this test's own clients log their URLs
    records = [r for r in caplog.records if not r.name.startswith(client_side)]
    text = "\n".join(f"{r.getMessage()} {r.args} {r.exc_text or ''}" for r in records)
    assert "api_key=***" in text and "/v1/predict" in text  # the requests were logged, masked
    for key in (*KEYS, WRONG):
        assert key not in text


# ----------------------------------------------------------------------------- checkpoints


class _Touch:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _pickle_checkpoints(tmp_path: Path, marker: Path) -> list[Path]:
    pt = tmp_path / "model.pt"
    torch.save({"state_dict": _Touch(marker)}, pt)  # a torch zip archive holding a pickle
    raw = tmp_path / "model.safetensors"  # a plain pickle, named like a safetensors file
    raw.write_bytes(pickle.dumps(_Touch(marker)))
    return [pt, raw]


def test_a_pickle_checkpoint_is_refused_without_running_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    paths = _pickle_checkpoints(tmp_path, marker)
    pickle.loads(paths[1].read_bytes()).close()  # the payload is live: plain unpickling runs it
    assert marker.exists()
    marker.unlink()
    for path in paths:
        with pytest.raises(CheckpointError, match="not a readable safetensors"):
            read_meta(path)
        with pytest.raises(CheckpointError):
            load_checkpoint(path)
        monkeypatch.setenv("EMOTION_CHECKPOINT", str(path))
        assert main(["--device", "cpu", "--port", "0"]) == 2  # refused at startup, before serving
        assert "not a readable safetensors file" in capsys.readouterr().err
    assert not marker.exists()


def _safetensors_with_meta(path: Path, meta: str) -> Path:
    save_file({"w": torch.zeros(2)}, str(path), metadata={META_KEY: meta})
    return path


def test_hostile_safetensors_metadata_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    good = json.loads(CheckpointMeta(classes=list(EMOTIONS)).model_dump_json())
    bad_meta = {
        "pickle in the metadata": pickle.dumps(_Touch(marker)).decode("latin-1"),
        "not json": "{'classes': ['happy']}",
        "unknown field": json.dumps({**good, "__reduce__": "os.system"}),
        "code as architecture": json.dumps({**good, "arch": "__import__('os').system('id')"}),
        "other format": json.dumps({**good, "format": "pickle/1"}),
        "huge input size": json.dumps({**good, "input_size": 10**9}),
    }
    for i, (what, meta) in enumerate(bad_meta.items()):
        path = _safetensors_with_meta(tmp_path / f"m{i}.safetensors", meta)
        with pytest.raises(CheckpointError):
            read_meta(path)
        assert not marker.exists(), what
    lying = tmp_path / "lying-header.safetensors"
    lying.write_bytes(struct.pack("<Q", 2**60) + b"{}")  # a header length far past the file
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_meta(lying)


def test_no_loader_in_the_server_can_unpickle() -> None:
    """The whole server package: weights come from safetensors and protobuf only."""
    unsafe = re.compile(r"torch\.load\(|pickle\.loads?\(|allow_pickle\s*=\s*True|joblib|dill\.")
    hits = [
        f"{p.relative_to(REPO)}:{i}"
        for p in (REPO / "server").rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if unsafe.search(line)
    ]
    assert not hits, hits
