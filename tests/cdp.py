"""Headless Chromium driven over the DevTools protocol, for the browser-client test.

Talks CDP with the `websockets` sync client the project already depends on, so the test
needs no playwright and never downloads a browser: it uses the system `chromium` or skips.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from websockets.sync.client import ClientConnection, connect

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    exe = os.environ.get("CHROMIUM")
    if exe and Path(exe).is_file():
        return exe
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def write_y4m(path: Path, rgb: np.ndarray, frames: int = 2) -> None:
    """A Y4M 4:2:0 file (Chromium's --use-file-for-fake-video-capture format) of a still RGB image."""
    h, w = rgb.shape[:2]
    f = rgb.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    # BT.601 full range (the 'jpeg' chroma flavour).
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    v = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b

    def half(c: np.ndarray) -> np.ndarray:
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    planes = [np.clip(p, 0, 255).round().astype(np.uint8).tobytes() for p in (y, half(u), half(v))]
    with path.open("wb") as fh:
        fh.write(f"YUV4MPEG2 W{w} H{h} F30:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            fh.write(b"FRAME\n")
            for plane in planes:
                fh.write(plane)


class Chromium:
    """One headless Chromium process with a fake camera, and a CDP session on its first page."""

    def __init__(
        self,
        exe: str,
        y4m: Path | None,
        profile: Path,
        width: int = 1280,
        height: int = 860,
        extra_args: Sequence[str] = (),
    ) -> None:
        """``y4m=None``: no camera at all (getUserMedia finds no device)."""
        self.log_path = profile.parent / "chromium.log"
        args = [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--use-fake-ui-for-media-stream",
            *(
                ["--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={y4m}"]
                if y4m is not None
                else []
            ),
            *extra_args,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "--remote-debugging-port=0",
            "about:blank",
        ]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        self._id = 0
        try:
            self.ws = self._attach(profile)
        except BaseException:
            self.close()
            raise

    def _attach(self, profile: Path, timeout: float = 30.0) -> ClientConnection:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start; log:\n{self.log_tail()}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = json.load(resp)
        page = next(t for t in targets if t["type"] == "page")
        # Entered, not just called: websockets 17.1+ deprecates a bare connect() (closed in close()).
        return connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10).__enter__()

    def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """One CDP command; events that arrive meanwhile are ignored."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        res = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"JS error in {expression!r}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float) -> Any:
        """Poll a JS expression until it is truthy; returns its value. JS errors (page still loading)
        count as not yet, until the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                value = None
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.25)

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def log_tail(self, n: int = 3000) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
