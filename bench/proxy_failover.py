"""Two ``emotion-server`` replicas behind nginx (deploy/nginx/emotion-service.conf); one is killed under load.

REST clients and lockstep stream clients (the client's own ``LockstepStream``, which reconnects)
go through the proxy. Before the kill: how REST spreads over the replicas (nginx's access log
names the upstream of every request) and that each stream stays on one. Then one replica gets
SIGKILL: REST must keep answering through the survivor (nginx re-sends a request that hit the
dead one), streams on it must reconnect through the proxy, and every client must finish before
its deadline. Writes its table to docs/reliability.md.

    python bench/proxy_failover.py --warm 5 --after 10 --rest-clients 4 --streams 4
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docsection import write_section
from serverproc import REPO, ServerProcess, free_port

CONF = REPO / "deploy" / "nginx" / "emotion-service.conf"
SECTION = "## Replicas behind nginx: failover"
ACCESS = re.compile(r'^(?P<uri>\S+) (?P<status>\d+) (?P<upstream>[^"]*?) "(?P<ustatus>[^"]*)"$')


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


class Nginx:
    """nginx from the repo's config, its upstream ports and listen port swapped for free ones."""

    def __init__(
        self, backends: list[int], work: Path, port: int | None = None, site: str | None = None
    ) -> None:
        """``site``: a server block instead of the repo's, with ``{backend}`` and ``{port}`` filled in."""
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (Debian: apt-get install nginx)")
        self.binary, self.work, self.port = binary, work, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.access_log = work / "access.log"
        if site is not None:
            site = site.format(backend=backends[0], port=self.port)
        else:
            site = CONF.read_text()
            servers = iter(backends)
            site = re.sub(r"server 127\.0\.0\.1:\d+", lambda _: f"server 127.0.0.1:{next(servers)}", site)
            site = re.sub(r"listen 127\.0\.0\.1:\d+", f"listen 127.0.0.1:{self.port}", site)
        (work / "site.conf").write_text(site)
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach the temp dirs below
        (work / "nginx.conf").write_text(
            f"{user}worker_processes 1;\npid {work}/nginx.pid;\nerror_log {work}/error.log warn;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            f"  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;\n"
            f"  fastcgi_temp_path {work}/fcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;\n"
            "  log_format upstreams '$uri $status $upstream_addr \"$upstream_status\"';\n"
            f"  access_log {self.access_log} upstreams;\n"
            f"  include {work}/site.conf;\n"
            "}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Nginx:
        conf = str(self.work / "nginx.conf")
        check = subprocess.run([self.binary, "-t", "-p", str(self.work), "-c", conf], capture_output=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed: {check.stderr.decode(errors='replace')}")
        self.proc = subprocess.Popen(
            [self.binary, "-p", str(self.work), "-c", conf, "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen on {self.port}; see {self.work}/error.log")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish open requests
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def upstreams(self, uri: str) -> list[tuple[int, str, str]]:
        """(status, upstream addresses tried, their statuses) per logged request for ``uri``."""
        out = []
        for line in self.access_log.read_text().splitlines() if self.access_log.exists() else []:
            m = ACCESS.match(line)
            if m and m["uri"] == uri:
                out.append((int(m["status"]), m["upstream"], m["ustatus"]))
        return out


#: After the kill, before "answered after the kill" is counted (see ``_experiment``).
SETTLE_S = 0.25


@dataclass
class RestLog:
    """(seconds since start, latency s, HTTP status or 0 for a transport error / timeout)."""

    calls: list[tuple[float, float, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def rest_client(url: str, jpeg: bytes, t0: float, stop: threading.Event, log: RestLog) -> None:
    with httpx.Client(timeout=10.0) as client:
        while not stop.is_set():
            start = time.monotonic()
            try:
                status = client.post(url + "/v1/predict", content=jpeg).status_code
            except httpx.HTTPError:
                status = 0
            with log.lock:
                log.calls.append((start - t0, time.monotonic() - start, status))


@dataclass
class StreamLog:
    replies: list[float] = field(default_factory=list)  # seconds since start
    reconnects: int = 0
    error: str | None = None


def stream_client(url: str, jpeg: bytes, t0: float, stop: threading.Event, log: StreamLog) -> None:
    from client.lockstep import LockstepStream
    from shared.protocol import StreamControl

    stream = LockstepStream(url, None, StreamControl(), retry_for=20.0)
    try:
        while not stop.is_set():
            stream.ask(jpeg)
            log.replies.append(time.monotonic() - t0)
            time.sleep(0.05)  # a webcam-like 10-20 fps, not a flood
    except Exception as exc:  # reported in the table: a stream that gave up is a failure
        log.error = f"{type(exc).__name__}: {exc}"
    finally:
        log.reconnects = stream.reconnects
        stream.close()


def start_replicas(n: int, env: dict[str, str], work: Path) -> list[ServerProcess]:
    servers = [ServerProcess(env=env, log_path=work / f"replica{i}.log") for i in range(n)]
    errors: list[BaseException] = []

    def start(s: ServerProcess) -> None:
        try:
            s.start(timeout=120)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for s in servers:
            s.stop()
        raise errors[0]
    return servers


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]
    )


def run(
    warm: float,
    after: float,
    rest_clients: int,
    streams: int,
    env: dict[str, str] | None = None,
    jpeg: bytes | None = None,
) -> dict[str, Any]:
    """The whole experiment; returns the numbers (the test asserts on them, main() writes the table)."""
    if jpeg is None:
        from bench_server import frame_jpeg

        jpeg = frame_jpeg()
    settings = {"EMOTION_TORCH_THREADS": "1", "EMOTION_DECODE_THREADS": "1", **(env or {})}
    with tempfile.TemporaryDirectory(prefix="emotion-nginx-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        replicas = start_replicas(2, settings, work)
        proxy = Nginx([s.port for s in replicas], work)
        try:
            proxy.start()
            return _experiment(proxy, replicas, jpeg, warm, after, rest_clients, streams)
        finally:
            proxy.stop()
            for s in replicas:
                s.stop()


def _experiment(
    proxy: Nginx,
    replicas: list[ServerProcess],
    jpeg: bytes,
    warm: float,
    after: float,
    rest_clients: int,
    streams: int,
) -> dict[str, Any]:
    stop = threading.Event()
    rest, stream_logs = RestLog(), [StreamLog() for _ in range(streams)]
    t0 = time.monotonic()
    threads = [
        threading.Thread(target=rest_client, args=(proxy.url, jpeg, t0, stop, rest), daemon=True)
        for _ in range(rest_clients)
    ] + [
        threading.Thread(target=stream_client, args=(proxy.url, jpeg, t0, stop, log), daemon=True)
        for log in stream_logs
    ]
    for t in threads:
        t.start()
    time.sleep(warm)
    # The victim is the replica holding more streams, so some streams must move.
    on = [int(s.metric("emotion_active_streams")) for s in replicas]
    victim, survivor = (replicas[0], replicas[1]) if on[0] >= on[1] else (replicas[1], replicas[0])
    addr = {f"127.0.0.1:{victim.port}": "killed replica", f"127.0.0.1:{survivor.port}": "survivor"}
    logged = proxy.upstreams("/v1/predict")
    spread = Counter(addr.get(up, up) for _, up, _ in logged)
    on_victim, on_survivor = max(on), min(on)
    t_kill = time.monotonic() - t0
    victim.kill()
    # Requests the victim finished just before it died can reach nginx's log a moment later: count
    # "answered after the kill" from a moment after it, so that only the survivor can be in it.
    time.sleep(SETTLE_S)
    settled = len(proxy.upstreams("/v1/predict"))
    time.sleep(max(0.0, after - SETTLE_S))
    stop.set()
    deadline = time.monotonic() + 25.0  # a request times out after 10 s, a stream retries for 20 s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = sum(t.is_alive() for t in threads)
    # Where each request logged since the kill settled was answered: the last upstream nginx tried.
    answered_by = Counter(
        addr.get(up.split(",")[-1].strip(), up) for _, up, _ in proxy.upstreams("/v1/predict")[settled:]
    )
    before = [c for c in rest.calls if c[0] < t_kill]
    later = [c for c in rest.calls if c[0] >= t_kill]
    ws_log = proxy.upstreams("/v1/stream")
    recovered = [
        min((t for t in log.replies if t > t_kill), default=float("nan")) - t_kill for log in stream_logs
    ]
    return {
        "t_kill": t_kill,
        "rest_spread": dict(spread),
        "rest_spread_after": dict(answered_by),
        "rest_before": {"ok": sum(c[2] == 200 for c in before), "failed": sum(c[2] != 200 for c in before)},
        "rest_after": {"ok": sum(c[2] == 200 for c in later), "failed": sum(c[2] != 200 for c in later)},
        "rest_after_codes": dict(Counter(c[2] for c in later if c[2] != 200)),
        "rest_p50_ms": {
            "before": 1000 * pct([c[1] for c in before], 50),
            "after": 1000 * pct([c[1] for c in later], 50),
        },
        "rest_max_ms_after": 1000 * max((c[1] for c in later), default=float("nan")),
        "retried_on_survivor": sum(1 for _, up, _ in proxy.upstreams("/v1/predict") if "," in up),
        "streams": streams,
        "streams_on_victim": on_victim,
        "streams_on_survivor": on_survivor,
        "stream_replies_before": sum(sum(t < t_kill for t in log.replies) for log in stream_logs),
        "stream_replies_after": sum(sum(t >= t_kill for t in log.replies) for log in stream_logs),
        "reconnects": sum(log.reconnects for log in stream_logs),
        "stream_errors": [log.error for log in stream_logs if log.error],
        "recovery_s": recovered,
        "ws_connections": len(ws_log),
        "hung_clients": hung,
    }


def table(r: dict[str, Any], args: argparse.Namespace) -> str:
    spread = ", ".join(f"{k}: {v}" for k, v in sorted(r["rest_spread"].items()))
    spread_after = ", ".join(f"{k}: {v}" for k, v in sorted(r["rest_spread_after"].items()))
    rec = [x for x in r["recovery_s"] if x == x]
    before, after, p50 = r["rest_before"], r["rest_after"], r["rest_p50_ms"]
    codes = f" (statuses {r['rest_after_codes']})" if r["rest_after_codes"] else ""
    cmd = (
        f"python bench/proxy_failover.py --warm {args.warm:g} --after {args.after:g} "
        f"--rest-clients {args.rest_clients} --streams {args.streams}"
    )
    rows = [
        "| | before the kill | after the kill |",
        "| --- | --- | --- |",
        f"| REST answered 200 / failed | {before['ok']} / {before['failed']} "
        f"| {after['ok']} / {after['failed']}{codes} |",
        f"| REST p50 latency | {p50['before']:.0f} ms "
        f"| {p50['after']:.0f} ms (max {r['rest_max_ms_after']:.0f} ms) |",
        f"| REST requests answered by (nginx access log) | {spread} | {spread_after} |",
        f"| streams (killed replica / survivor) | {r['streams_on_victim']} / {r['streams_on_survivor']} "
        "| all on the survivor |",
        f"| stream replies | {r['stream_replies_before']} | {r['stream_replies_after']} |",
    ]
    notes = [
        f"- Requests nginx re-sent to the survivor after hitting the dead replica: {r['retried_on_survivor']}"
        " (`proxy_next_upstream error timeout http_502 http_503 non_idempotent`;",
        "  `/v1/predict` keeps no state, so re-sending it is safe).",
        f"- Streams reconnected through the proxy: {r['reconnects']} "
        f"(the {r['streams_on_victim']} on the killed replica); every stream's first reply after the kill "
        f"came within {max(rec) if rec else float('nan'):.2f} s; "
        f"streams that gave up: {len(r['stream_errors'])}.",
        f"- WebSocket connections nginx proxied (one upstream each: a stream is pinned to its replica): "
        f"{r['ws_connections']}.",
        f"- Clients still running 25 s after the load stopped (hung): {r['hung_clients']}.",
    ]
    intro = (
        f"`{cmd}`: two `emotion-server` processes (CPU, 1 torch thread each) on loopback behind "
        f"{r.get('nginx', 'nginx')} with `deploy/nginx/emotion-service.conf`; {args.rest_clients} REST "
        f"clients posting a 640x480 JPEG in a loop and {args.streams} WebSocket streams (the client's "
        f"`LockstepStream`: one frame in flight, ~15 fps) all go through the proxy. After {args.warm:g} s "
        f"the replica holding more streams gets SIGKILL; the load goes on for {args.after:g} s. Measured on "
        "the shared 2-core dev box (other jobs running), so latencies compare only within the table; both "
        "replicas share those 2 cores, so the survivor alone can be faster than the pair was."
    )
    return "\n".join([SECTION, "", intro, "", *rows, "", *notes, ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warm", type=float, default=5.0, help="seconds of load before the kill")
    p.add_argument("--after", type=float, default=10.0, help="seconds of load after the kill")
    p.add_argument("--rest-clients", type=int, default=4)
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "reliability.md")
    args = p.parse_args(argv)
    result = run(args.warm, args.after, args.rest_clients, args.streams)
    binary = nginx_binary() or "nginx"
    version = subprocess.run([binary, "-v"], capture_output=True, text=True).stderr.strip()
    result["nginx"] = version.replace("nginx version: ", "")
    for k, v in result.items():
        print(f"{k}: {v}")
    write_section(args.out, SECTION, table(result, args))
    print(f"wrote {SECTION!r} to {args.out}")
    ok = (
        result["rest_after"]["ok"] > 0
        and not result["rest_after"]["failed"]
        and not result["stream_errors"]
        and not result["hung_clients"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
