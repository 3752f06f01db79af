"""Soak test: N WebSocket streams against a real ``emotion-server`` subprocess for D seconds.

Each stream sends a 640x480 one-face JPEG at ``--fps`` whatever the replies (the server drops
what it cannot serve, newest frame wins), then sends nothing for a moment and waits for the
reply to its last frame. Reported, per time bucket (default one minute): answered frames/s,
client-side latency p50/p95/p99 (frame sent -> its reply), server RSS and CPU. Pass criteria:

* zero server errors: nothing in ``emotion_errors_total``, no ERROR/Traceback in the server log,
  no error message or unexpected close on any stream;
* every frame accounted for on every stream: answered + dropped == sent, indices increasing;
* server RSS at the end within 5 % of its value after the warm-up (first bucket);
* latency stable: the last bucket's p95 at most 1.5x the first post-warm-up bucket's.

    python bench/soak.py                                     # 32 streams x 600 s (the full run)
    python bench/soak.py --streams 8 --duration 60 --bucket 15   # a quick check
    python bench/soak.py --write docs/reliability.md             # and record it there

Loopback only; the server runs with EMOTION_MAX_STREAMS raised to fit the streams. Exit code 0
when every criterion passes, 1 otherwise; ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from bench_server import frame_jpeg, machine
from docsection import write_section
from serverproc import ServerProcess, describe
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

SECTION = "## Soak"
RSS_LIMIT_PCT = 5.0
P95_DRIFT_LIMIT = 1.5
Samples = list[dict[str, float]]  # server RSS/CPU/fds readings over time


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    p.add_argument("--fps", type=float, default=2.0, help="send rate per stream")
    p.add_argument("--bucket", type=float, default=60.0, help="report interval in seconds (first = warm-up)")
    p.add_argument("--checkpoint", type=Path, help="default: the server's bundled checkpoint")
    p.add_argument("--torch-threads", type=int, help="EMOTION_TORCH_THREADS for the server")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--write", type=Path, help=f"replace the {SECTION!r} section of this Markdown file")
    return p


@dataclass
class StreamStats:
    sent: int = 0
    answered: int = 0
    dropped: int = 0
    errors: list[str] = field(default_factory=list)
    last_frame: int = -1
    out_of_order: int = 0
    replies: list[tuple[float, float]] = field(default_factory=list)  # (reply time, latency ms)


async def run_stream(
    ws_url: str, jpeg: bytes, fps: float, t0: float, duration: float, st: StreamStats
) -> None:
    """One paced stream until ``duration``, then wait for the reply to its last frame."""
    sent_at: dict[int, float] = {}
    try:
        async with connect(ws_url, max_size=2**22, open_timeout=30) as ws:

            async def receive() -> None:
                async for msg in ws:
                    reply = json.loads(msg)
                    now = time.perf_counter()
                    if "error" in reply:
                        st.errors.append(f"error message: {reply['error']}")
                        continue
                    frame = reply["frame"]
                    if frame <= st.last_frame:
                        st.out_of_order += 1
                    st.last_frame = frame
                    st.answered += 1
                    st.dropped += reply["dropped"]
                    st.replies.append((now - t0, (now - sent_at.pop(frame)) * 1000.0))
                    for k in [k for k in sent_at if k < frame]:
                        del sent_at[k]
                    if stopped and frame == st.sent - 1:
                        return

            stopped = False
            rx = asyncio.create_task(receive())
            phase = np.random.default_rng().random() / fps  # spread the streams' send times
            await asyncio.sleep(phase)
            while (now := time.perf_counter()) - t0 < duration and not rx.done():
                sent_at[st.sent] = now
                await ws.send(jpeg)
                st.sent += 1
                await asyncio.sleep(max(0.0, t0 + phase + st.sent / fps - time.perf_counter()))
            stopped = True
            if st.last_frame != st.sent - 1:
                await asyncio.wait_for(rx, 60)  # the last frame is always answered
            rx.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rx
    except (ConnectionClosed, OSError, TimeoutError) as exc:
        st.errors.append(f"connection: {type(exc).__name__}: {exc}")


async def sample(server: ServerProcess, t0: float, stop: asyncio.Event, out: Samples) -> None:
    """Server RSS, CPU seconds and open files every 5 s until ``stop``."""
    cpu0 = server.cpu_seconds()
    while True:
        now = time.perf_counter() - t0
        out.append(
            {
                "t": now,
                "rss_mb": server.rss_mb(),
                "cpu_s": server.cpu_seconds() - cpu0,
                "fds": server.open_fds(),
            }
        )
        if stop.is_set():  # the streams have closed: this last reading shows what they left behind
            return
        try:
            await asyncio.wait_for(stop.wait(), 5.0)
            await asyncio.sleep(1.0)
        except TimeoutError:
            pass


async def soak(server: ServerProcess, args: argparse.Namespace) -> tuple[list[StreamStats], Samples]:
    jpeg = frame_jpeg()
    stats = [StreamStats() for _ in range(args.streams)]
    samples: list[dict[str, float]] = []
    stop = asyncio.Event()
    t0 = time.perf_counter()
    sampler = asyncio.create_task(sample(server, t0, stop, samples))
    await asyncio.gather(*(run_stream(server.ws_url, jpeg, args.fps, t0, args.duration, s) for s in stats))
    stop.set()
    await sampler
    return stats, samples


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def buckets(stats: list[StreamStats], samples: Samples, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per time bucket: answered fps, latency percentiles (by reply time), server RSS and CPU."""
    n = max(1, int(np.ceil(args.duration / args.bucket)))
    rows = []
    for b in range(n):
        lo, hi = b * args.bucket, min((b + 1) * args.bucket, args.duration)
        lat = [ms for s in stats for t, ms in s.replies if lo <= t < hi]
        inside = [x for x in samples if lo <= x["t"] <= hi + 2.5]
        before = [x for x in samples if x["t"] <= lo + 2.5]
        cpu = (
            100.0 * (inside[-1]["cpu_s"] - before[-1]["cpu_s"]) / (inside[-1]["t"] - before[-1]["t"])
            if inside and before and inside[-1]["t"] > before[-1]["t"]
            else float("nan")
        )
        rows.append(
            {
                "from_s": lo,
                "to_s": hi,
                "fps": len(lat) / (hi - lo),
                "p50": pct(lat, 50),
                "p95": pct(lat, 95),
                "p99": pct(lat, 99),
                "rss_mb": inside[-1]["rss_mb"] if inside else float("nan"),
                "cpu_pct": cpu,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    env = {"EMOTION_MAX_STREAMS": str(max(16, args.streams + 4)), "EMOTION_MAX_QUEUE": "1024"}
    if args.checkpoint:
        env["EMOTION_CHECKPOINT"] = str(args.checkpoint.resolve())
    if args.torch_threads:
        env["EMOTION_TORCH_THREADS"] = str(args.torch_threads)
    server = ServerProcess(env=env, log_path=Path(f"/tmp/emotion-soak-{time.strftime('%H%M%S')}.log"))
    with server:
        info = httpx.get(server.url + "/v1/info").json()
        idle_rss = server.rss_mb()
        print(
            f"soak: {args.streams} streams x {args.duration:.0f} s at {args.fps:g} fps each against "
            f"{server.url} ({describe(info)}); server idle RSS {idle_rss:.0f} MiB",
            flush=True,
        )
        stats, samples = asyncio.run(soak(server, args))
        metric_errors = server.new_errors()
        active_after = server.metric("emotion_active_streams")
        log_errors = server.error_lines()
    rows = buckets(stats, samples, args)
    sent = sum(s.sent for s in stats)
    answered = sum(s.answered for s in stats)
    dropped = sum(s.dropped for s in stats)
    client_errors = [e for s in stats for e in s.errors]
    unbalanced = sum(1 for s in stats if s.answered + s.dropped != s.sent)
    out_of_order = sum(s.out_of_order for s in stats)
    warm = [x for x in samples if x["t"] >= min(args.bucket, args.duration)]
    base = warm[0]["rss_mb"] if warm else samples[0]["rss_mb"]
    end = [x for x in samples if x["t"] <= args.duration + 2.5][-1]["rss_mb"]
    peak = max(x["rss_mb"] for x in (warm or samples))
    growth = 100.0 * (end - base) / base
    post = [r for r in rows[1:] if not np.isnan(r["p95"])] or rows
    drift = post[-1]["p95"] / post[0]["p95"] if post[0]["p95"] else float("nan")
    checks = {
        "zero server errors": not metric_errors and not log_errors and not client_errors,
        "answered + dropped == sent, indices increasing": unbalanced == 0 and out_of_order == 0,
        f"RSS growth after warm-up < {RSS_LIMIT_PCT:g} %": growth < RSS_LIMIT_PCT,
        f"p95 drift (last / first post-warm-up bucket) <= {P95_DRIFT_LIMIT:g}": drift <= P95_DRIFT_LIMIT,
        "no stream left open": active_after == 0,
    }
    all_lat = [ms for s in stats for _, ms in s.replies]
    lines = [
        "| time | answered fps | p50 ms | p95 ms | p99 ms | server RSS MiB | server CPU % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['from_s']:.0f}-{r['to_s']:.0f} s | {r['fps']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | "
        f"{r['p99']:.0f} | {r['rss_mb']:.0f} | {r['cpu_pct']:.0f} |"
        for r in rows
    ]
    summary = (
        f"{args.streams} streams x {args.duration:.0f} s, each sending at {args.fps:g} fps: sent {sent}, "
        f"answered {answered} ({answered / args.duration:.1f} frames/s), dropped {dropped} (newest wins); "
        f"latency p50/p95/p99 {pct(all_lat, 50):.0f}/{pct(all_lat, 95):.0f}/{pct(all_lat, 99):.0f} ms; "
        f"server RSS idle {idle_rss:.0f} MiB, after warm-up {base:.0f}, at the end {end:.0f}, "
        f"peak {peak:.0f} (growth {growth:+.2f} %); "
        f"server open files {samples[0]['fds']:.0f} before, {samples[-1]['fds']:.0f} after the streams; "
        f"p95 drift x{drift:.2f}. Server errors: metrics {metric_errors or 'none'}, log lines "
        f"{len(log_errors)}, client-side {len(client_errors)}."
    )
    verdicts = [f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in checks.items()]
    report = "\n".join([*lines, "", summary, "", *verdicts])
    print("\n" + report + f"\n\nmachine: {machine()}; server log {server.log_path}")
    if client_errors:
        print("client-side errors (first 3):", client_errors[:3])
    if args.write:
        given = list(argv if argv is not None else sys.argv[1:])
        cmd = " ".join(["python bench/soak.py", *given])
        body = (
            f"{SECTION}\n\n{describe(info)}; one 640x480 JPEG with one face per frame; latency is "
            f"client-side, frame sent -> its reply. Client and server share the machine.\n\n{report}\n\n"
            f"Machine: {machine()}; finished {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
            f"Reproduce: `{cmd}`\n"
        )
        write_section(args.write, SECTION, body)
        print(f"wrote {SECTION!r} in {args.write}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "buckets": rows,
                    "sent": sent,
                    "answered": answered,
                    "dropped": dropped,
                    "rss_mb": {
                        "idle": idle_rss,
                        "base": base,
                        "end": end,
                        "peak": peak,
                        "growth_pct": growth,
                    },
                    "latency_ms": {q: pct(all_lat, q) for q in (50, 95, 99)},
                    "errors": {
                        "metrics": metric_errors,
                        "log": log_errors[:20],
                        "client": client_errors[:20],
                    },
                    "checks": checks,
                    "machine": machine(),
                    "median_fps": statistics.median(r["fps"] for r in rows),
                },
                indent=1,
            )
        )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
