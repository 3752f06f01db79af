"""Fault injection against a real ``emotion-server`` subprocess on 127.0.0.1.

``kill``: the server is SIGKILLed under load and restarted on the same port. The load is the
project's own client, ``emotion-client stream --no-display`` (one process per stream); each
must reconnect on its own and carry on, exit 0 when stopped, and leave no socket behind: once
the clients are gone there is no ESTABLISHED or CLOSE_WAIT socket on the port and no open
stream on the server.

``slowloris``: many connections that never send a request, trickle their headers, or trickle
their body, one byte a second. Each must be closed by the server (408) within its deadline
(``EMOTION_HEADER_TIMEOUT_S`` / ``EMOTION_BODY_TIMEOUT_S``) while normal requests keep being
answered promptly, and the server's open files must return to where they were.

    python bench/faults.py                       # both, ~2 min
    python bench/faults.py kill --clients 4
    python bench/faults.py slowloris --slow 300 --header-timeout 5 --body-timeout 10

Exit code 0 when every check passes. ``tests/test_reliability_faults.py`` runs short versions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from serverproc import REPO, ServerProcess, tcp_states

# ----------------------------------------------------------------------------- kill and restart


def jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def wait_for(cond: Any, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - t0


def kill_restart(
    clients: int = 4,
    fps: float = 5.0,
    down_s: float = 2.0,
    env: dict[str, str] | None = None,
    settle_s: float = 3.0,
) -> dict[str, Any]:
    """SIGKILL the server under stream load, restart it on the same port; the numbers and checks."""
    from bench_server import frame_jpeg

    work = Path(tempfile.mkdtemp(prefix="emotion-faults-"))
    (work / "images").mkdir()
    (work / "images" / "frame.jpg").write_bytes(frame_jpeg())
    server = ServerProcess(env=env, log_path=work / "server.log")
    t0 = time.monotonic()
    server.start()
    first_ready = time.monotonic() - t0
    procs, logs = [], []
    for i in range(clients):
        log = work / f"client{i}.jsonl"
        cmd = [
            sys.executable,
            "-m",
            "client",
            "stream",
            "--server",
            server.url,
            "--images",
            str(work / "images"),
        ]
        cmd += ["--loop", "--fps", str(fps), "--no-display", "--jsonl", str(log)]
        procs.append(
            subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        )
        logs.append(log)
    result: dict[str, Any] = {"clients": clients, "fps": fps, "down_s": down_s, "first_ready_s": first_ready}
    try:
        wait_for(lambda: all(len(jsonl(p)) >= 3 for p in logs), 120, "replies from every client")
        before = [len(jsonl(p)) for p in logs]
        server.kill()
        killed_at = time.monotonic()
        result["sockets_after_kill"] = tcp_states(server.port)
        time.sleep(down_s)
        server.start()
        result["restart_ready_s"] = time.monotonic() - killed_at

        def reconnected() -> bool:
            return all(any(r["conn"] > 1 for r in jsonl(p)) for p in logs)

        wait_for(reconnected, 120, "every client to get replies after the restart")
        result["all_reconnected_s"] = time.monotonic() - killed_at
        time.sleep(settle_s)
        after = [sum(r["conn"] > 1 for r in jsonl(p)) for p in logs]
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        codes, errs = [], []
        for proc in procs:
            _, err = proc.communicate(timeout=30)
            codes.append(proc.returncode)
            errs.append(err)
        time.sleep(1.0)
        result.update(
            replies_before_kill=before,
            replies_after_restart=after,
            connections=[max(r["conn"] for r in jsonl(p)) for p in logs],
            client_exit_codes=codes,
            reconnect_messages=[e.count("reconnected") for e in errs],
            sockets_after_clients_exit=tcp_states(server.port),
            active_streams_after=server.metric("emotion_active_streams"),
            server_errors=server.new_errors(),
            server_error_log_lines=server.error_lines(),
        )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        server.stop()
    socks = result.get("sockets_after_clients_exit", {"?": 1})
    result["checks"] = {
        "every client reconnected and was answered": all(
            n > 0 for n in result.get("replies_after_restart", [0])
        ),
        "clients exit 0 on SIGINT": result.get("client_exit_codes") == [0] * clients,
        "no ESTABLISHED/CLOSE_WAIT socket left": not any(
            k in socks for k in ("ESTABLISHED", "CLOSE_WAIT", "?")
        ),
        "no stream left open on the server": result.get("active_streams_after") == 0,
        "no server error": not result.get("server_errors") and not result.get("server_error_log_lines"),
    }
    return result


# ----------------------------------------------------------------------------- slowloris


@dataclass
class SlowConn:
    kind: str  # idle | headers | body
    closed_after: float | None = None
    status: int | None = None
    sent: int = 0


@dataclass
class NormalTraffic:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


HEAD = (
    b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
    b"Content-Length: 100000\r\n\r\n"
)


async def slow_client(port: int, conn: SlowConn, interval: float, limit: float) -> None:
    """Send one byte per ``interval`` (nothing for ``idle``) until the server closes, or ``limit``."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = HEAD if conn.kind == "headers" else b"\xff" * 100_000
    if conn.kind == "body":
        writer.write(HEAD)
    try:
        while time.monotonic() - t0 < limit:
            if conn.kind != "idle" and conn.sent < len(payload):
                writer.write(payload[conn.sent : conn.sent + 1])
                conn.sent += 1
            try:
                data = await asyncio.wait_for(reader.read(4096), interval)
            except TimeoutError:
                continue
            if data.startswith(b"HTTP/1.1 "):
                conn.status = int(data.split(b" ", 2)[1])
            if not data or conn.status is not None:
                conn.closed_after = time.monotonic() - t0
                return
    except ConnectionError:
        conn.closed_after = time.monotonic() - t0
    finally:
        writer.close()


async def normal_client(url: str, jpeg: bytes, stop: asyncio.Event, out: NormalTraffic) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            resp = await client.post(
                url + "/v1/predict", content=jpeg, headers={"content-type": "image/jpeg"}
            )
            out.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
            out.statuses.append(resp.status_code)
            await asyncio.sleep(0.3)


async def slowloris_against(
    url: str,
    port: int,
    jpeg: bytes,
    slow: int,
    header_timeout: float,
    body_timeout: float,
    warm_s: float = 2.0,
) -> tuple[list[SlowConn], NormalTraffic, NormalTraffic]:
    """``slow`` slow connections (a third of each kind) alongside normal requests; what happened.
    Normal requests run alone for ``warm_s`` first, for a baseline latency."""
    baseline, during = NormalTraffic(), NormalTraffic()
    stop = asyncio.Event()
    warm = asyncio.create_task(normal_client(url, jpeg, stop, baseline))
    await asyncio.sleep(warm_s)
    stop.set()
    await warm
    conns = [SlowConn(("idle", "headers", "body")[i % 3]) for i in range(slow)]
    limit = max(header_timeout, body_timeout) + 10.0
    stop = asyncio.Event()
    normal = asyncio.create_task(normal_client(url, jpeg, stop, during))
    await asyncio.gather(*(slow_client(port, c, 1.0, limit) for c in conns))
    stop.set()
    await normal
    return conns, baseline, during


def slowloris(
    slow: int = 150,
    header_timeout: float = 5.0,
    body_timeout: float = 10.0,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    from bench_server import frame_jpeg

    settings = {"EMOTION_HEADER_TIMEOUT_S": str(header_timeout), "EMOTION_BODY_TIMEOUT_S": str(body_timeout)}
    with ServerProcess(env={**settings, **(env or {})}) as server:
        fds_before = server.open_fds()
        conns, baseline, during = asyncio.run(
            slowloris_against(server.url, server.port, frame_jpeg(), slow, header_timeout, body_timeout)
        )
        time.sleep(1.0)
        fds_after = server.open_fds()
        errors = server.new_errors()
        log_errors = server.error_lines()
    return slowloris_report(conns, baseline, during, header_timeout, body_timeout) | {
        "server_fds": [fds_before, fds_after],
        "server_errors": errors,
        "server_error_log_lines": log_errors,
        "checks_extra": {
            "server open files back to baseline": fds_after <= fds_before + 2,
            "no server error": set(errors) <= {"request_timeout"} and not log_errors,
        },
    }


def slowloris_report(
    conns: list[SlowConn],
    baseline: NormalTraffic,
    during: NormalTraffic,
    header_timeout: float,
    body_timeout: float,
) -> dict[str, Any]:
    by_kind: dict[str, Any] = {}
    for kind, deadline in (("idle", header_timeout), ("headers", header_timeout), ("body", body_timeout)):
        mine = [c for c in conns if c.kind == kind]
        closed = [c.closed_after for c in mine if c.closed_after is not None]
        by_kind[kind] = {
            "count": len(mine),
            "closed": len(closed),
            "statuses": sorted({c.status for c in mine if c.status is not None}),
            "closed_after_s": [round(min(closed), 1), round(max(closed), 1)] if closed else None,
            "deadline_s": deadline,
        }
    med = statistics.median
    report: dict[str, Any] = {
        "slow_connections": by_kind,
        "normal_requests": {
            "before": {"n": len(baseline.statuses), "median_ms": round(med(baseline.latencies_ms), 1)},
            "during": {
                "n": len(during.statuses),
                "median_ms": round(med(during.latencies_ms), 1),
                "max_ms": round(max(during.latencies_ms), 1),
                "non_200": sum(s != 200 for s in during.statuses),
            },
        },
    }
    report["checks"] = {
        "every slow connection closed with 408 by its deadline (+2 s)": all(
            k["closed"] == k["count"]
            and k["statuses"] == [408]
            and k["closed_after_s"][1] <= k["deadline_s"] + 2
            for k in by_kind.values()
        ),
        "normal requests all 200 while slow clients are connected": bool(during.statuses)
        and all(s == 200 for s in during.statuses),
    }
    return report


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", nargs="*", metavar="kill|slowloris", help="which faults (default: both)")
    p.add_argument("--clients", type=int, default=4, help="kill: emotion-client stream processes")
    p.add_argument("--fps", type=float, default=5.0, help="kill: send rate per client")
    p.add_argument("--down", type=float, default=2.0, help="kill: seconds the server stays dead")
    p.add_argument("--slow", type=int, default=150, help="slowloris: slow connections (idle/headers/body)")
    p.add_argument("--header-timeout", type=float, default=5.0)
    p.add_argument("--body-timeout", type=float, default=10.0)
    p.add_argument("--checkpoint", type=Path, help="default: the server's bundled checkpoint")
    args = p.parse_args(argv)
    if set(args.which) - {"kill", "slowloris"}:
        p.error(f"unknown fault(s) {args.which}: choose kill and/or slowloris")
    env = {"EMOTION_CHECKPOINT": str(args.checkpoint.resolve())} if args.checkpoint else {}
    ok = True
    for which in args.which or ["kill", "slowloris"]:
        if which == "kill":
            result = kill_restart(args.clients, args.fps, args.down, env)
        else:
            result = slowloris(args.slow, args.header_timeout, args.body_timeout, env)
            result["checks"] |= result.pop("checks_extra")
        print(f"== {which}")
        for key, value in result.items():
            if key != "checks":
                print(f"{key}: {json.dumps(value)}")
        for name, passed in result["checks"].items():
            print(f"{'PASS' if passed else 'FAIL'}  {name}")
            ok = ok and bool(passed)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
