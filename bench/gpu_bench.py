"""Many WebSocket streams against one server on a GPU: frames/s, latency, GPU/CPU use, batch sizes.

Starts ``emotion-server`` as a real subprocess (``--device cuda`` by default) and drives
``--streams`` WebSocket streams of the same 640x480 one-face JPEG, each in lock-step (send a
frame, wait for its reply, send the next), from several client processes so that the
clients are not the bottleneck. Per configuration (``--configs``: server environment
overrides) and stream count it reports answered frames/s, latency p50/p95/p99 (frame sent
-> reply), the server's stage times, GPU utilisation and memory (NVML, sampled), the
server process's CPU use and the machine's, and the batch sizes the server formed (from
its /metrics histogram). Everything is printed and written as Markdown to
``--out-dir/gpu_bench.md`` plus a copy of docs/benchmarks.md with its "## GPU" section
replaced (``--out-dir/benchmarks.md``: copy it over docs/ where the run cannot write back).

On the device machine (see docs/benchmarks.md, "## GPU", for the exact call; ~5 min):

    bash bench/gpu_wheels.sh                                      # here, once: fills .whl/
    python3 bench/gpu_bench.py --out-dir $OUT                      # there, with .whl carried

Locally, small and on the CPU, to check that it works:

    python bench/gpu_bench.py --device cpu --streams 1,4 --duration 5 --clients 2 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from docsection import write_section  # bench/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent
SECTION = "## GPU"
#: Defaults first; then bigger batches (64 streams can fill 64), the res10 SSD instead of the distilled
#: default (does it pay on a GPU too?), more decode threads.
DEFAULT_CONFIGS = (
    ";EMOTION_MAX_BATCH_SIZE=64"
    ";EMOTION_MAX_BATCH_SIZE=64,EMOTION_DETECTOR=ssd"
    ";EMOTION_MAX_BATCH_SIZE=128,EMOTION_DECODE_THREADS=12"
)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--streams", default="1,64", help="stream counts, comma-separated")
    p.add_argument(
        "--configs",
        default=DEFAULT_CONFIGS,
        help="server configurations: ';'-separated, each ','-separated EMOTION_X=Y (empty = defaults)",
    )
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before each phase")
    p.add_argument("--clients", type=int, default=min(8, os.cpu_count() or 1), help="client processes")
    p.add_argument("--out-dir", type=Path, help="write gpu_bench.md, gpu_bench.json, benchmarks.md here")
    p.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    return p


# ----------------------------------------------------------------------------- clients


async def _lockstep(url: str, jpeg: bytes, start: float, end: float, out: dict[str, list[float]]) -> None:
    from websockets.asyncio.client import connect

    async with connect(url, max_size=2**22, open_timeout=60) as ws:
        while (now := time.monotonic()) < end:
            await ws.send(jpeg)
            reply = json.loads(await ws.recv())
            done = time.monotonic()
            if "error" in reply:
                out["errors"].append(1.0)
                continue
            if now >= start:
                out["latency"].append((done - now) * 1000.0)
                for k in ("decode", "detect", "classify"):
                    out[k].append(reply["timing_ms"][k])


def _client(url: str, jpeg: bytes, n: int, start: float, end: float, q: Any) -> None:
    """One client process: ``n`` lock-step streams; puts its samples on ``q``."""
    out: dict[str, list[float]] = {k: [] for k in ("latency", "decode", "detect", "classify", "errors")}

    async def run() -> None:
        await asyncio.gather(*(_lockstep(url, jpeg, start, end, out) for _ in range(n)))

    try:
        asyncio.run(run())
    except Exception as exc:  # reported, not raised: the parent must still collect the others
        out["failure"] = [0.0]
        print(f"client failed: {exc!r}", file=sys.stderr)
    q.put(out)


# ----------------------------------------------------------------------------- observation


class Sampler:
    """GPU utilisation/memory (NVML) and whole-machine CPU busy share, sampled on a thread."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.gpu_util: list[float] = []
        self.gpu_mem_mb: list[float] = []
        self.cpu_busy: list[float] = []
        self._stop = threading.Event()
        self._nvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = (pynvml, pynvml.nvmlDeviceGetHandleByIndex(0))
        except Exception:
            self._nvml = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _cpu_times() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    def _run(self) -> None:
        busy0, total0 = self._cpu_times()
        while not self._stop.wait(self.interval):
            busy1, total1 = self._cpu_times()
            if total1 > total0:
                self.cpu_busy.append(100.0 * (busy1 - busy0) / (total1 - total0))
            busy0, total0 = busy1, total1
            if self._nvml is not None:
                nv, h = self._nvml
                self.gpu_util.append(float(nv.nvmlDeviceGetUtilizationRates(h).gpu))
                self.gpu_mem_mb.append(nv.nvmlDeviceGetMemoryInfo(h).used / 2**20)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def batch_histogram(server: Any) -> dict[str, float]:
    """Cumulative emotion_batch_size: count, sum and the bucket counts, from /metrics."""
    from server.metrics import BATCH_BUCKETS, sum_samples

    text = httpx.get(server.url + "/metrics", headers=server.auth(), timeout=10).text
    out = {
        "count": sum_samples(text, "emotion_batch_size_count"),
        "sum": sum_samples(text, "emotion_batch_size_sum"),
    }
    for le in BATCH_BUCKETS:
        out[f"le{le}"] = sum_samples(text, "emotion_batch_size_bucket", le=f"{float(le)}")
    return out


@dataclass
class Result:
    config: str
    streams: int
    frames: int = 0
    errors: int = 0
    wall_s: float = 0.0
    latency: list[float] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    gpu_util: float = float("nan")
    gpu_mem_mb: float = float("nan")
    server_cpu_pct: float = 0.0
    machine_cpu_pct: float = 0.0
    batches: dict[str, float] = field(default_factory=dict)

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latency, q)) if self.latency else float("nan")

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s else 0.0

    def batch_summary(self) -> str:
        from server.metrics import BATCH_BUCKETS

        b = self.batches
        if not b.get("count"):
            return "-"
        mean = b["sum"] / b["count"]
        # Median batch: the smallest bucket bound holding half the batches.
        median = next((le for le in BATCH_BUCKETS if b[f"le{le}"] >= b["count"] / 2), BATCH_BUCKETS[-1])
        return f"mean {mean:.1f}, median <= {median}, {b['count']:.0f} batches"


def run_phase(server: Any, config: str, streams: int, args: argparse.Namespace, jpeg: bytes) -> Result:
    res = Result(config, streams)
    clients = max(1, min(args.clients, streams))
    per = [streams // clients + (1 if i < streams % clients else 0) for i in range(clients)]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    start = time.monotonic() + args.warmup + 3.0  # process start-up, connections, warm-up
    end = start + args.duration
    procs = [ctx.Process(target=_client, args=(server.ws_url, jpeg, n, start, end, q)) for n in per if n]
    for p in procs:
        p.start()
    time.sleep(max(0.0, start - time.monotonic()))
    before = batch_histogram(server)
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    with Sampler() as sampler:
        time.sleep(max(0.0, end - time.monotonic()))
    wall = time.monotonic() - t0
    res.server_cpu_pct = 100.0 * (server.cpu_seconds() - cpu0) / wall
    after = batch_histogram(server)
    res.batches = {k: after[k] - before[k] for k in after}
    parts = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    res.wall_s = args.duration
    for part in parts:
        if "failure" in part:
            raise RuntimeError("a client process failed; see its message above")
        res.latency += part["latency"]
        res.errors += len(part["errors"])
    res.frames = len(res.latency)
    res.stages = {
        k: statistics.median([v for part in parts for v in part[k]]) if res.frames else float("nan")
        for k in ("decode", "detect", "classify")
    }
    if sampler.gpu_util:
        res.gpu_util = statistics.mean(sampler.gpu_util)
        res.gpu_mem_mb = max(sampler.gpu_mem_mb)
    res.machine_cpu_pct = statistics.mean(sampler.cpu_busy) if sampler.cpu_busy else float("nan")
    return res


# ----------------------------------------------------------------------------- report


def table(results: list[Result]) -> str:
    rows = [
        "| server config | streams | frames/s | p50 ms | p95 ms | p99 ms | errors "
        "| decode / detect / classify ms (median) | GPU util % | GPU mem MiB | server CPU % "
        "| machine CPU % | batch sizes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        s = r.stages
        rows.append(
            f"| {r.config or 'defaults'} | {r.streams} | {r.fps:.0f} | {r.pct(50):.1f} | {r.pct(95):.1f} | "
            f"{r.pct(99):.1f} | {r.errors} | {s['decode']:.1f} / {s['detect']:.1f} / {s['classify']:.1f} | "
            f"{r.gpu_util:.0f} | {r.gpu_mem_mb:.0f} | {r.server_cpu_pct:.0f} | {r.machine_cpu_pct:.0f} | "
            f"{r.batch_summary()} |"
        )
    return "\n".join(rows)


def machine(device: str) -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else "none"
    py = sys.version.split()[0]
    return f"GPU {gpu}; {os.cpu_count()} logical CPUs; torch {torch.__version__}; Python {py}"


def render(
    args: argparse.Namespace, results: list[Result], described: list[str], t0: float, jpeg: bytes
) -> str:
    given = list(args.argv)
    return (
        f"{SECTION}\n\n"
        "`bench/gpu_bench.py`: one `emotion-server` process, WebSocket streams of the same 640x480 "
        f"one-face JPEG ({len(jpeg) / 1024:.0f} KiB), each in lock-step (next frame sent when the reply "
        "arrived), from "
        f"{args.clients} client processes on the same machine; {args.duration:g} s measured per row after "
        f"{args.warmup:g} s warm-up. Latency = frame sent -> its reply. GPU utilisation is NVML's, averaged; "
        "CPU % is of one core (server process) or of the whole machine.\n\n"
        + table(results)
        + "\n\n"
        + "\n".join(f"- {d}" for d in described)
        + f"\n\nMachine: {machine(args.device)}. Total run {time.monotonic() - t0:.0f} s.\n\n"
        + f"Reproduce: `python3 bench/gpu_bench.py {' '.join(given)}`\n"
    )


def emit(args: argparse.Namespace, body: str, results: list[Result]) -> None:
    """Write what there is so far: a run stopped at its time limit still leaves every finished row."""
    if not args.out_dir:
        return
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "gpu_bench.md").write_text(body)
    (args.out_dir / "gpu_bench.json").write_text(
        json.dumps([{**r.__dict__, "latency": None, "fps": r.fps} for r in results], indent=1)
    )
    copy = args.out_dir / "benchmarks.md"
    copy.write_text(args.doc.read_text() if args.doc.exists() else "# Benchmarks\n")
    write_section(copy, SECTION, body)


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    sys.path.insert(0, str(REPO))
    from bench_server import frame_jpeg
    from serverproc import ServerProcess, describe

    jpeg = frame_jpeg()
    results: list[Result] = []
    described: list[str] = []
    t_all = time.monotonic()
    for config in args.configs.split(";"):
        env = dict(kv.split("=", 1) for kv in config.split(",") if kv.strip())
        env.setdefault("EMOTION_MAX_STREAMS", "1024")
        env.setdefault("EMOTION_STREAM_MAX_FPS", "1000")
        env.setdefault("EMOTION_MAX_QUEUE", "4096")
        with ServerProcess(env=env, device=args.device) as server:
            info = httpx.get(server.url + "/v1/info", headers=server.auth(), timeout=10).json()
            described.append(f"{config or 'defaults'}: {describe(info)}, backend {info.get('backend')}")
            for n in (int(s) for s in args.streams.split(",") if s):
                r = run_phase(server, config, n, args, jpeg)
                results.append(r)
                print(table([r]).splitlines()[-1], flush=True)
                emit(args, render(args, results, described, t_all, jpeg), results)
            errors = server.error_lines()
            if errors:
                print(f"server logged {len(errors)} error line(s), first: {errors[0]}", file=sys.stderr)
    body = render(args, results, described, t_all, jpeg)
    print("\n" + body)
    emit(args, body, results)
    if not args.no_write:
        write_section(args.doc, SECTION, body)


if __name__ == "__main__":
    main()
