"""A real uvicorn server on a free loopback port, in a background thread, for the server tests.

Tests talk to it over real sockets with httpx and the ``websockets`` client, so the
HTTP/WebSocket layers, lifespan, batcher and models all run as in production.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from server.app import create_app
from server.cli import GracefulServer, build_server
from server.config import Settings
from server.metrics import sum_samples
from server.runtime import AnalyzerFactory, load_analyzer


def server_settings(checkpoint: Path, **overrides: Any) -> Settings:
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
    base.update(overrides)
    return Settings(**base)


class LiveServer:
    def __init__(self, settings: Settings, analyzer_factory: AnalyzerFactory = load_analyzer) -> None:
        self.settings = settings
        self.app = create_app(settings, analyzer_factory=analyzer_factory)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/stream"
        self.server: GracefulServer = build_server(self.app, settings, log_config=None, port=self.port)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    def start(self, wait_ready: bool = True, timeout: float = 120.0) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        if wait_ready:
            while httpx.get(self.url + "/readyz", headers=self.auth()).status_code != 200:
                if time.monotonic() > deadline or self.runtime.load_error:
                    raise RuntimeError(f"server not ready: {self.runtime.load_error}")
                time.sleep(0.05)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def auth(self) -> dict[str, str]:
        keys = self.settings.key_values()
        return {"X-API-Key": keys[0]} if keys else {}

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` (optionally filtered by labels) from GET /metrics."""
        text = httpx.get(self.url + "/metrics", headers=self.auth()).text
        return sum_samples(text, name, **labels)


def jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


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


async def recv_json(ws: Any, timeout: float = 20.0) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(msg, str), "server replies are JSON text"
    data: dict[str, Any] = json.loads(msg)
    return data


def run(coro: Any, timeout: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def retry(fn: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(0.05)
    return False
