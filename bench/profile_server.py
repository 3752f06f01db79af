"""Where a real server's time goes per request: py-spy samples of every thread, summed by function.

Starts ``emotion-server`` (default configuration, plus ``--env``) as a subprocess, warms it up,
then records it with ``py-spy`` (``pip install py-spy``; a profiling tool, not a dependency) while
sending ``--requests`` lock-step requests: ``POST /v1/predict`` of ``bench/vs_fer.py``'s one-face
640x480 JPEG, or (``--stream``) frames of ``bench/stream_roi.py``'s drifting-face sequence over one
WebSocket. Prints, per thread, the milliseconds per request it was busy (not waiting for work),
and the functions that took the most of it, inclusive. Waiting for the CPU on a busy machine
counts as busy for the function that waits, so compare runs made under similar load.

    python bench/profile_server.py                 # REST, ~1 min
    python bench/profile_server.py --stream --requests 400
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
RATE = 500  # samples per second
SPY_OPTIONS = ("--threads", "--idle", "--nonblocking", "-f", "raw")
#: Leaf frames of a thread that is waiting for work (idle), not running.
IDLE = ("_worker (concurrent", "Runner.run (asyncio", "Condition.wait (threading", "select (selectors")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--stream", action="store_true", help="one WebSocket stream instead of REST")
    p.add_argument("--env", action="append", default=[], help="EMOTION_X=Y for the server")
    p.add_argument("--top", type=int, default=12, help="functions listed per thread")
    return p


def drive(url: str, ws_url: str, n: int, stream: bool) -> None:
    if stream:
        from stream_roi import drifting_frames, lockstep

        frames = drifting_frames()
        asyncio.run(lockstep(ws_url, [frames[i % len(frames)] for i in range(n)]))
        return
    from vs_fer import frames as fer_frames

    data = fer_frames()["one face"]
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(n):
            client.post(
                "/v1/predict", content=data, headers={"content-type": "image/jpeg"}
            ).raise_for_status()


def summarise(raw: Path, n: int, top: int) -> str:
    """py-spy's raw (collapsed) stacks -> per-thread busy ms per request and top inclusive functions."""
    ms = 1000.0 / RATE / n
    busy: Counter[str] = Counter()
    total: Counter[str] = Counter()
    incl: Counter[tuple[str, str]] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = frames[0].split(": ")[-1].rstrip(")")
        total[thread] += int(count)
        if frames[-1].startswith(IDLE):
            continue
        busy[thread] += int(count)
        seen = set()
        for f in frames[1:]:
            name = f.split(" (")[0] + " (" + f.split("/")[-1]
            if name not in seen:
                incl[(thread, name)] += int(count)
                seen.add(name)
    out = []
    for thread, samples in busy.most_common():
        out.append(
            f"\n{thread}: busy {samples * ms:.1f} ms per request ({samples / total[thread]:.0%} of the run)"
        )
        mine = [(f, c) for (t, f), c in incl.most_common() if t == thread]
        # Skip the shared outer frames (thread bootstrap, event loop) that every sample has.
        mine = [(f, c) for f, c in mine if c < samples * 0.98][:top]
        out += [f"  {c * ms:6.2f} ms  {f}" for f, c in mine]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        sys.exit("py-spy not found: pip install py-spy")
    sys.path.insert(0, str(REPO))
    from serverproc import ServerProcess

    env = dict(kv.split("=", 1) for kv in args.env)
    raw = Path(tempfile.mkdtemp()) / "profile.txt"
    load = os.getloadavg()[0]
    with ServerProcess(env=env) as server:
        drive(server.url, server.ws_url, 10, args.stream)  # warm-up
        rec = subprocess.Popen(
            [spy, "record", "-p", str(server.pid), "-r", str(RATE), *SPY_OPTIONS, "-o", str(raw)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.5)  # py-spy attaches
        t0 = time.perf_counter()
        drive(server.url, server.ws_url, args.requests, args.stream)
        wall = (time.perf_counter() - t0) * 1000.0 / args.requests
        rec.send_signal(2)
        rec.wait(60)
    kind = "stream frames" if args.stream else "POST /v1/predict requests"
    print(
        f"{args.requests} lock-step {kind}: {wall:.1f} ms each on average (wall, client side); "
        f"1-min load average {load:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    print(summarise(raw, args.requests, args.top))


if __name__ == "__main__":
    main()
