"""The one live server for tests, and the helpers tests share (images, WebSocket reads, the client CLI).

A real uvicorn server built by ``server.cli.build_server`` (the same protocols, limits and
graceful shutdown as ``emotion-server``) on a loopback port, in a background thread. Tests talk
to it over real sockets with httpx, the ``websockets`` client, the ``emotion-client`` CLI or a
browser, so the HTTP/WebSocket layers, lifespan, batcher and models all run as in production.

A server can be stopped and a new one started on the same port (``LiveServer(settings,
port=old.port)``): the reconnect tests need that. Test modules import helpers from here (or get
them as conftest fixtures), never from each other.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image
from websockets.exceptions import ConnectionClosed

from server.app import create_app
from server.cli import GracefulServer, build_server
from server.config import Settings
from server.metrics import sum_samples
from server.runtime import AnalyzerFactory, Runtime, load_analyzer


def server_settings(checkpoint: Path, **overrides: Any) -> Settings:
    """Settings for a test server: CPU, small thread pools, quiet logs, quick shutdown."""
    base: dict[str, Any] = {
        "checkpoint": checkpoint,
        "device": "cpu",
        "host": "127.0.0.1",
        "port": 0,
        "torch_threads": 1,
        "decode_threads": 2,
        "log_level": "warning",
        "shutdown_timeout_s": 5.0,
    }
    return Settings(**(base | overrides))


class LiveServer:
    """``build_server`` on 127.0.0.1 (a free port, or ``port``); ``with`` starts it ready and stops it."""

    def __init__(
        self, settings: Settings, analyzer_factory: AnalyzerFactory = load_analyzer, port: int = 0
    ) -> None:
        self.settings = settings
        self.app = create_app(settings, analyzer_factory=analyzer_factory)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may reuse the port
        self.sock.bind(("127.0.0.1", port))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/stream"
        self.server: GracefulServer = build_server(self.app, settings, log_config=None, port=self.port)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name=f"uvicorn:{self.port}", daemon=True
        )

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime

    def start(self, wait_ready: bool = True, timeout: float = 120.0) -> LiveServer:
        """Serve; with ``wait_ready`` return once /readyz says the model is loaded and warmed up."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.02)
        if wait_ready:
            while httpx.get(self.url + "/readyz", headers=self.auth()).status_code != 200:
                if time.monotonic() > deadline or self.runtime.load_error:
                    raise RuntimeError(f"server not ready: {self.runtime.load_error}")
                time.sleep(0.05)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)
            assert not self.thread.is_alive(), "uvicorn did not stop"
        self.sock.close()

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def auth(self) -> dict[str, str]:
        keys = self.settings.key_values()
        return {"X-API-Key": keys[0]} if keys else {}

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` (optionally filtered by labels) from GET /metrics."""
        text = httpx.get(self.url + "/metrics", headers=self.auth()).text
        return sum_samples(text, name, **labels)


def free_port() -> int:
    """A loopback port nobody listens on (for a server that is not there, or starts later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_client(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`emotion-client ARGS` as a user runs it: a separate process, real exit code, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "client", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


# Images


def encode(img: np.ndarray, fmt: str = "JPEG", **options: Any) -> bytes:
    """``img`` (H, W[, C]) uint8 as ``fmt`` file bytes, with PIL (``options`` go to ``Image.save``)."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **options)
    return buf.getvalue()


def chw(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) RGB array -> the (3, H, W) uint8 view detectors take, as decoded frames are."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)


def jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    return encode(img, "JPEG", quality=quality)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` (the pixel data is absent)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG with its SOF0 header patched to claim ``width x height``."""
    data = bytearray(encode(np.zeros((16, 16, 3), np.uint8)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def face_tile(astronaut: np.ndarray, side: int) -> np.ndarray:
    """The astronaut's head and shoulders (a 240x240 crop around the face) at ``side`` pixels."""
    crop = astronaut[0:240, 110:350]
    return np.asarray(Image.fromarray(crop).resize((side, side), Image.Resampling.BILINEAR))


def faces_canvas(astronaut: np.ndarray, sides: tuple[int, ...] = (160, 300, 220)) -> np.ndarray:
    """A scene with one astronaut face per entry of ``sides`` (different sizes, left to right), on grey."""
    gap = 40
    canvas = np.full((max(sides) + 2 * gap, sum(sides) + gap * (len(sides) + 1), 3), 128, np.uint8)
    x = gap
    for side in sides:
        canvas[gap : gap + side, x : x + side] = face_tile(astronaut, side)
        x += side + gap
    return canvas


def frame_640x480(astronaut: np.ndarray) -> np.ndarray:
    """The benchmark/stream frame: the astronaut scaled to 480 high, padded to 640x480 (webcam size)."""
    tile = np.asarray(Image.fromarray(astronaut).resize((480, 480), Image.Resampling.BILINEAR))
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[:, 80:560] = tile
    return frame


# WebSocket and waiting


async def recv_json(ws: Any, timeout: float = 20.0) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(msg, str), "server replies are JSON text"
    data: dict[str, Any] = json.loads(msg)
    return data


async def close_code(ws: Any, timeout: float = 20.0) -> tuple[int, str]:
    """Read until the server closes; the close code and reason it sent."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, "the server must send a close frame"
        return exc.rcvd.code, exc.rcvd.reason


def run(coro: Any, timeout: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def retry(fn: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(0.05)
    return False
