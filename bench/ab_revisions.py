"""Before/after: ``POST /v1/predict`` round trips of servers built from different git revisions, side by side.

Each ``--rev NAME=REV`` is exported (``git archive``) into a temporary folder and served from
there by a real ``emotion-server`` subprocess (this checkout's interpreter and packages, default
configuration, plus ``--env``); ``NAME=.`` serves this working tree as it is. Requests go to the
servers in turn, frame by frame, the order reversed every other round, so background load hits
all alike: ``bench/vs_fer.py``'s frames (one face, three faces, no face). Prints medians, p95, the
ratio to the first revision and each server's own median stage timings, and each server's RSS when
ready (idle) and after the requests.

    python bench/ab_revisions.py --rev before=HEAD~3 --rev after=.
    python bench/ab_revisions.py --rev a=. --rev b=. --env-for b:EMOTION_STREAM_REDETECT_EVERY=1
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rev", action="append", required=True, help="NAME=GITREV, or NAME=. for the work tree")
    p.add_argument("--iters", type=int, default=40, help="timed requests per frame and server")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--env", action="append", default=[], help="EMOTION_X=Y for every server")
    p.add_argument(
        "--env-for", action="append", default=[], help="NAME:EMOTION_X=Y for one server (same revision twice)"
    )
    return p


def export(rev: str, into: Path) -> Path:
    """The tree of ``rev`` in ``into`` (``.``: this checkout itself)."""
    if rev == ".":
        return REPO
    into.mkdir(parents=True, exist_ok=True)
    archive = into / "tree.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(REPO), "archive", rev], stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    archive.unlink()
    return into


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    sys.path.insert(0, str(REPO))
    from serverproc import ServerProcess
    from vs_fer import frames

    revs = dict(r.split("=", 1) for r in args.rev)
    env = dict(kv.split("=", 1) for kv in args.env)
    jpegs = frames()
    ms: dict[tuple[str, str], list[float]] = {(n, f): [] for n in revs for f in jpegs}
    stages: dict[tuple[str, str], list[dict[str, float]]] = {(n, f): [] for n in revs for f in jpegs}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        servers = {}
        try:
            for name, rev in revs.items():
                tree = export(rev, Path(tmp) / name) if rev != "." else REPO
                own = dict(e.split(":", 1)[1].split("=", 1) for e in args.env_for if e.startswith(name + ":"))
                servers[name] = ServerProcess(env={**env, **own}, repo=tree).start()
            idle = {n: s.rss_mb() for n, s in servers.items()}  # ready, before any request
            clients = {n: httpx.Client(base_url=s.url, timeout=60) for n, s in servers.items()}
            headers = {"content-type": "image/jpeg"}
            for i in range(args.warmup + args.iters):
                order = list(servers) if i % 2 == 0 else list(servers)[::-1]
                for frame, data in jpegs.items():
                    for name in order:
                        t0 = time.perf_counter()
                        resp = clients[name].post("/v1/predict", content=data, headers=headers)
                        took = (time.perf_counter() - t0) * 1000.0
                        resp.raise_for_status()
                        if i >= args.warmup:
                            ms[(name, frame)].append(took)
                            stages[(name, frame)].append(resp.json()["timing_ms"])
            after = {n: s.rss_mb() for n, s in servers.items()}
        finally:
            for s in servers.values():
                s.stop()
    print(
        f"{args.iters} requests per frame and server, alternating; 1-min load average {load:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after\n"
    )
    print("| frame | revision | p50 ms | p95 ms | vs first | server decode / detect / classify / total ms |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for frame in jpegs:
        first = statistics.median(ms[(next(iter(revs)), frame)])
        for name, rev in revs.items():
            v = ms[(name, frame)]
            st = {
                k: statistics.median(d[k] for d in stages[(name, frame)])
                for k in ("decode", "detect", "classify", "total")
            }
            print(
                f"| {frame} | {name} ({rev}) | {statistics.median(v):.1f} | {np.percentile(v, 95):.1f} | "
                f"{statistics.median(v) / first:.2f} | "
                f"{st['decode']:.1f} / {st['detect']:.1f} / {st['classify']:.1f} / {st['total']:.1f} |"
            )
    print("\n| revision | idle RSS MiB | RSS after MiB |\n| --- | ---: | ---: |")
    for name, rev in revs.items():
        print(f"| {name} ({rev}) | {idle[name]:.0f} | {after[name]:.0f} |")


if __name__ == "__main__":
    main()
