"""A refused API key ends the client at once with a clear message and a non-zero exit, no retry loop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from server_harness import LiveServer, run_client, server_settings

from client.cli import EXIT_USAGE, main

pytestmark = pytest.mark.slow
KEY = "correct-horse-battery"


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    with LiveServer(server_settings(tiny_checkpoint, api_keys=[KEY])) as srv:
        yield srv


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.jpg"), astronaut[..., ::-1])
    return folder


@pytest.mark.parametrize("key", [None, "wrong-key-123"], ids=["no-key", "wrong-key"])
def test_stream_with_a_refused_key_exits_non_zero(server: LiveServer, images: Path, key: str | None) -> None:
    args = ["stream", "--server", server.url, "--images", str(images), "--no-display", "--loop"]
    start = time.monotonic()
    proc = run_client(*args, *(["--api-key", key] if key else []), timeout=30)
    assert proc.returncode == EXIT_USAGE
    assert "API key" in proc.stderr and "(1008)" in proc.stderr, proc.stderr
    assert "retrying" not in proc.stderr and "reconnecting" not in proc.stderr
    assert proc.stdout == "" and time.monotonic() - start < 20


def test_predict_with_a_wrong_key_exits_non_zero(
    server: LiveServer, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["predict", str(images / "0.jpg"), "--server", server.url, "--api-key", "wrong-key-123"]
    assert main(args) == EXIT_USAGE
    assert "API key refused by the server (HTTP 401" in capsys.readouterr().err


def test_the_right_key_streams(server: LiveServer, images: Path) -> None:
    args = ["stream", "--server", server.url, "--images", str(images), "--fps", "5", "--no-display"]
    proc = run_client(*args, "--api-key", KEY)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) >= 1
