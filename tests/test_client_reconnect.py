"""Server restarted mid-stream on the same port: the client reconnects, carries on, and quits on Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from server_harness import LiveServer, free_port, run_client, server_settings

from client.cli import EXIT_FAIL

pytestmark = pytest.mark.slow


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_reconnects_after_server_restart_then_quits_on_ctrl_c(
    tiny_checkpoint: Path, astronaut: np.ndarray, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.jpg"), astronaut[..., ::-1])
    log = tmp_path / "session.jsonl"
    settings = server_settings(tiny_checkpoint)
    first = LiveServer(settings).start()
    client = subprocess.Popen(
        [sys.executable, "-m", "client", "stream", "--server", first.url, "--images", str(images), "--loop",
         "--fps", "6", "--no-display", "--jsonl", str(log), "--duration", "90"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    second: LiveServer | None = None
    try:
        _wait(lambda: len(_lines(log)) >= 3, 30, "first replies")
        first.stop()
        time.sleep(1.0)  # the client now sees refused connections and backs off
        second = LiveServer(settings, port=first.port).start()
        _wait(lambda: sum(rec["conn"] > 1 for rec in _lines(log)) >= 2, 30, "replies after the restart")
        client.send_signal(signal.SIGINT)
        _, err = client.communicate(timeout=15)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
        if second is not None:
            second.stop()
        first.stop()
    assert client.returncode == 0, err
    assert "reconnecting" in err and "reconnected" in err and "stopping" in err
    conns = [rec["conn"] for rec in _lines(log)]
    assert conns == sorted(conns) and conns[0] == 1 and len(set(conns)) == 2, (
        "one connection before, one after"
    )
    after = [rec["frame"] for rec in _lines(log) if rec["conn"] > 1]
    assert after[0] < 3, "frame indices restart with the new connection"
    assert err.count("reconnected") <= 3, "no tight reconnect loop while the new server warms up"


def test_a_server_that_never_answered_fails_fast(tmp_path: Path, astronaut: np.ndarray) -> None:
    """Nothing listening (wrong --server, server not started): exit 1 at once with what to check,
    instead of a retry loop that looks like a hang. (Mid-session loss still retries: above.)"""
    cv2.imwrite(str(tmp_path / "a.jpg"), astronaut[..., ::-1])
    dead = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    proc = run_client("stream", "--server", dead, "--images", str(tmp_path), "--loop", "--no-display",
                      timeout=30)  # fmt: skip
    assert proc.returncode == EXIT_FAIL, proc.stderr
    assert time.monotonic() - start < 15
    err = proc.stderr
    assert f"cannot connect to ws://{dead[7:]}/v1/stream" in err and "is the server running" in err, err
    assert "--retry-for" in err and "reconnecting" not in err and "Traceback" not in err
    assert proc.stdout == ""


def test_retry_for_waits_for_a_server_that_is_still_starting(
    tiny_checkpoint: Path, tmp_path: Path, astronaut: np.ndarray
) -> None:
    cv2.imwrite(str(tmp_path / "a.jpg"), astronaut[..., ::-1])
    port = free_port()
    client = subprocess.Popen(
        [sys.executable, "-m", "client", "stream", "--server", f"http://127.0.0.1:{port}", "--images",
         str(tmp_path), "--loop", "--fps", "5", "--duration", "15", "--no-display", "--retry-for", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(2.0)  # the client is retrying now
        assert client.poll() is None, "with --retry-for the first connection is waited for"
        with LiveServer(server_settings(tiny_checkpoint), port=port):
            out, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    assert client.returncode == 0, err
    assert "reconnecting" in err and len(out.splitlines()) >= 1, err
