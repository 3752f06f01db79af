"""A real uvicorn server on loopback (background thread) and a CLI runner, for client and browser tests.

`LiveServer` can be stopped and started again on the same port, which is what the
reconnect test needs; it waits for /readyz so tests start against a warmed-up model.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn


def run_client(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`emotion-client ARGS` as a user runs it: a separate process, real exit code, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "client", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_for(checkpoint: Path, **overrides: Any) -> Any:
    from server.config import Settings

    base: dict[str, Any] = {
        "checkpoint": checkpoint,
        "device": "cpu",
        "torch_threads": 1,
        "decode_threads": 1,
        "log_level": "warning",
        "shutdown_timeout_s": 1.0,
    }
    return Settings(**(base | overrides))


class LiveServer:
    def __init__(self, settings: Any, port: int | None = None) -> None:
        self.settings = settings
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 60.0) -> LiveServer:
        from server.app import create_app

        config = uvicorn.Config(
            create_app(self.settings),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"uvicorn:{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise RuntimeError(f"server on port {self.port} exited during startup")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server on port {self.port} not ready within {timeout}s")

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=15)
            assert not self._thread.is_alive(), "uvicorn did not stop"
        self._server = self._thread = None

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
