"""``emotion-server`` as a real subprocess on 127.0.0.1, for the soak and fault scripts.

Unlike ``bench_server.server_process`` it keeps its port across restarts (the fault script
SIGKILLs it and starts it again where the clients expect it), writes the server's log to a
file so errors can be counted, and reads memory, open files and sockets from ``/proc``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx

from server.metrics import sum_samples

REPO = Path(__file__).resolve().parent.parent
#: Log lines that mean the server itself failed (not a client being refused).
ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def tcp_states(port: int) -> dict[str, int]:
    """TCP sockets on loopback ``port`` (either end), by state name, from /proc/net/tcp."""
    names = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2"}
    names |= {"06": "TIME_WAIT", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}
    out: dict[str, int] = {}
    hexport = f"{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if local.endswith(":" + hexport) or remote.endswith(":" + hexport):
            name = names.get(state, state)
            out[name] = out.get(name, 0) + 1
    return out


class ServerProcess:
    """One ``python -m server.cli`` process; ``start`` again after ``kill`` reuses the port."""

    def __init__(
        self,
        env: dict[str, str] | None = None,
        port: int | None = None,
        log_path: Path | None = None,
        device: str = "cpu",
        repo: Path | None = None,
    ) -> None:
        """``repo``: the source tree to run the server from (default this checkout), e.g. an
        exported older revision for a before/after comparison."""
        self.port = port or free_port()
        self.repo = repo or REPO
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/stream"
        self.env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "EMOTION_LOG_LEVEL": "warning", **(env or {})}
        self.device = device
        self.log_path = log_path or Path(f"/tmp/emotion-server-{self.port}.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._errors_at_start: dict[str, float] = {}
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 180.0) -> ServerProcess:
        cmd = [sys.executable, "-m", "server.cli", "--host", "127.0.0.1", "--port", str(self.port)]
        if self._log is not None:  # restarted after kill(): the previous run's handle
            self._log.close()
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*cmd, "--device", self.device], cwd=self.repo, env=self.env, stdout=self._log, stderr=self._log
        )
        self.starts += 1
        self.wait_ready(timeout)
        self._errors_at_start = self.errors_by_code()  # e.g. not_ready while /readyz was polled
        return self

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Seconds until /readyz answered 200."""
        t0 = time.monotonic()
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"server exited; see {self.log_path}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.TransportError:
                pass
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"server not ready after {timeout:.0f} s")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown handshake, clients see their connections drop."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> int | None:
        """SIGTERM (graceful), SIGKILL after 30 s; the exit code."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return None if self.proc is None else self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ observation

    def rss_mb(self) -> float:
        return int(proc_status(self.pid)["VmRSS"].split()[0]) / 1024

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def error_lines(self) -> list[str]:
        if not self.log_path.exists():
            return []
        text = self.log_path.read_text(errors="replace")
        return [line for line in text.splitlines() if ERROR_LINE.search(line)]

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` (optionally filtered by labels) from GET /metrics."""
        text = httpx.get(self.url + "/metrics", headers=self.auth(), timeout=10).text
        return sum_samples(text, name, **labels)

    def auth(self) -> dict[str, str]:
        keys = [k for k in self.env.get("EMOTION_API_KEYS", "").split(",") if k.strip()]
        return {"X-API-Key": keys[0].strip()} if keys else {}

    def new_errors(self) -> dict[str, float]:
        """``emotion_errors_total`` by code since this process became ready."""
        base = self._errors_at_start
        return {
            code: n - base.get(code, 0.0)
            for code, n in self.errors_by_code().items()
            if n > base.get(code, 0.0)
        }

    def errors_by_code(self) -> dict[str, float]:
        text = httpx.get(self.url + "/metrics", headers=self.auth(), timeout=10).text
        out: dict[str, float] = {}
        for code, value in re.findall(r'^emotion_errors_total\{code="([^"]*)"\} (\S+)$', text, re.M):
            out[code] = out.get(code, 0.0) + float(value)
        return {k: v for k, v in out.items() if v}


def describe(info: dict[str, Any]) -> str:
    m, d = info["model"], info["detector"]
    return (
        f"model {m['name']} {m['version']}, detector {d['kind']} at {d['input_size']}, "
        f"device {info['device']}, max batch {info['limits']['max_batch_size']}"
    )
