"""End-to-end server benchmark over loopback: WebSocket streams and REST, as clients see them.

Starts ``emotion-server`` as a real uvicorn subprocess on 127.0.0.1 and drives it with a
640x480 JPEG webcam-like frame with one face (scikit-image's astronaut, scaled and padded):

* single stream, lock-step (send, wait for the reply, repeat): the median frame time and
  frames/s (target on the CPU: >= 30 frames/s; ``fer`` itself is compared in bench/vs_fer.py);
* N concurrent streams, each sending at a target rate regardless of replies: achieved
  frames/s, p50/p95/p99 latency (frame sent -> its reply), frames dropped by the server;
* REST at concurrency N: requests/s and latency percentiles.

Server CPU (% of one core) and memory (RSS, peak) come from psutil if installed, else /proc.
Run time is bounded by ``--duration`` per phase. Results print as Markdown and, unless
``--no-write``, replace the "## Server" section of docs/benchmarks.md.

    python bench/bench_server.py                                  # ~1.5 min
    python bench/bench_server.py --streams 1,4 --rest 4 --duration 5 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from docsection import write_section  # bench/ is on sys.path when run as a script
from PIL import Image
from websockets.asyncio.client import connect

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Server"
TARGET_FPS = 30.0  # single stream, lock-step, on the CPU


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="default: the server's bundled checkpoint")
    p.add_argument("--device", default="cpu")
    p.add_argument("--streams", default="1,4,8", help="concurrent stream counts, comma-separated")
    p.add_argument("--fps", type=float, default=15.0, help="target send rate per stream")
    p.add_argument("--rest", default="1,4", help="REST concurrency levels, comma-separated")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    p.add_argument("--single-frames", type=int, default=100, help="frames for the lock-step single stream")
    p.add_argument("--torch-threads", type=int, help="EMOTION_TORCH_THREADS for the server")
    p.add_argument("--max-wait-ms", type=float, help="EMOTION_MAX_WAIT_MS for the server")
    p.add_argument("--detector-input-size", help="EMOTION_DETECTOR_INPUT_SIZE for the server, e.g. 160x120")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--note", default="", help="a sentence written above the table (e.g. 'preliminary')")
    return p


def frame_jpeg() -> bytes:
    """640x480 JPEG (quality 85): the astronaut scaled to 480x480, centred on grey."""
    from skimage import data

    tile = Image.fromarray(data.astronaut()).resize((480, 480), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (640, 480), (90, 90, 90))
    canvas.paste(tile, (80, 0))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=85)
    return buf.getvalue()


# ----------------------------------------------------------------------------- server process


class ProcStats:
    """CPU time and memory of one process: psutil when available, else /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            import psutil

            self._ps: Any = psutil.Process(pid)
        except ImportError:
            self._ps = None

    def cpu_seconds(self) -> float:
        if self._ps is not None:
            t = self._ps.cpu_times()
            return float(t.user + t.system)
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def memory_mb(self) -> tuple[float, float]:
        """(RSS now, peak RSS) in MiB."""
        if self._ps is not None:
            rss = self._ps.memory_info().rss / 2**20
            return rss, rss
        status = dict(
            line.split(":", 1)
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines()
            if ":" in line
        )
        return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


@contextmanager
def server_process(args: argparse.Namespace) -> Any:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "EMOTION_LOG_LEVEL": "warning"}
    env.update({"EMOTION_MAX_STREAMS": "64", "EMOTION_STREAM_MAX_FPS": "1000", "EMOTION_MAX_QUEUE": "1024"})
    for flag, name in (
        ("torch_threads", "TORCH_THREADS"),
        ("max_wait_ms", "MAX_WAIT_MS"),
        ("detector_input_size", "DETECTOR_INPUT_SIZE"),
    ):
        if getattr(args, flag) is not None:
            env[f"EMOTION_{name}"] = str(getattr(args, flag))
    if args.checkpoint:
        env["EMOTION_CHECKPOINT"] = str(args.checkpoint)
    cmd = [
        sys.executable,
        "-m",
        "server.cli",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        args.device,
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server not ready after 180 s")
            time.sleep(0.2)
        yield url, ProcStats(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


# ----------------------------------------------------------------------------- phases


@dataclass
class Phase:
    name: str
    wall_s: float = 0.0
    done: int = 0
    sent: int = 0
    dropped: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    server: dict[str, float] = field(default_factory=dict)  # median server-side timings
    cpu_pct: float = 0.0
    rss_mb: float = 0.0
    peak_mb: float = 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        return float(np.percentile(self.latencies_ms, q))

    @property
    def rate(self) -> float:
        return self.done / self.wall_s if self.wall_s else 0.0


@contextmanager
def measured(phase: Phase, stats: ProcStats) -> Any:
    cpu0, t0 = stats.cpu_seconds(), time.perf_counter()
    yield
    phase.wall_s = time.perf_counter() - t0
    phase.cpu_pct = 100.0 * (stats.cpu_seconds() - cpu0) / phase.wall_s
    phase.rss_mb, phase.peak_mb = stats.memory_mb()


async def single_stream(ws_url: str, jpeg: bytes, frames: int, phase: Phase) -> None:
    timings: dict[str, list[float]] = {"decode": [], "detect": [], "classify": [], "total": []}
    async with connect(ws_url, max_size=2**22) as ws:
        for i in range(frames + 5):
            t0 = time.perf_counter()
            await ws.send(jpeg)
            reply = json.loads(await ws.recv())
            if i < 5:  # warm-up frames
                continue
            phase.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
            phase.done += 1
            for k in timings:
                timings[k].append(reply["timing_ms"][k])
    phase.sent = phase.done
    phase.server = {k: statistics.median(v) for k, v in timings.items()}


async def paced_stream(ws_url: str, jpeg: bytes, fps: float, duration: float, phase: Phase) -> None:
    """Send at ``fps`` whatever the replies; latency is frame sent -> reply for that frame."""
    sent_at: dict[int, float] = {}
    async with connect(ws_url, max_size=2**22) as ws:

        async def sender() -> None:
            start = time.perf_counter()
            i = 0
            while (now := time.perf_counter()) - start < duration:
                sent_at[i] = now
                await ws.send(jpeg)
                i += 1
                await asyncio.sleep(max(0.0, start + i / fps - time.perf_counter()))
            phase.sent += i

        async def receiver() -> None:
            last = -1
            while True:
                reply = json.loads(await ws.recv())
                if "error" in reply:
                    phase.errors += 1
                    continue
                last = reply["frame"]
                phase.latencies_ms.append((time.perf_counter() - sent_at[last]) * 1000.0)
                phase.done += 1
                phase.dropped += reply["dropped"]

        rx = asyncio.create_task(receiver())
        await sender()
        await asyncio.sleep(1.0)  # let the last replies arrive
        rx.cancel()


async def rest_worker(
    url: str, jpeg: bytes, duration: float, phase: Phase, client: httpx.AsyncClient
) -> None:
    end = time.perf_counter() + duration
    headers = {"content-type": "image/jpeg"}
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        resp = await client.post(url + "/v1/predict", content=jpeg, headers=headers)
        phase.sent += 1
        if resp.status_code != 200:
            phase.errors += 1
            continue
        phase.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
        phase.done += 1


def run_phases(args: argparse.Namespace) -> tuple[list[Phase], dict[str, Any]]:
    jpeg = frame_jpeg()
    phases: list[Phase] = []
    with server_process(args) as (url, stats):
        ws_url = url.replace("http", "ws") + "/v1/stream"
        info = httpx.get(url + "/v1/info").json()
        idle_rss = stats.memory_mb()[0]

        p = Phase("1 stream, lock-step")
        with measured(p, stats):
            asyncio.run(single_stream(ws_url, jpeg, args.single_frames, p))
        phases.append(p)

        for n in (int(x) for x in args.streams.split(",") if x):
            p = Phase(f"{n} stream{'s' if n > 1 else ''} @ {args.fps:g} fps")

            async def streams(n: int = n, p: Phase = p) -> None:
                await asyncio.gather(
                    *(paced_stream(ws_url, jpeg, args.fps, args.duration, p) for _ in range(n))
                )

            with measured(p, stats):
                asyncio.run(streams())
            p.wall_s = args.duration  # rate over the sending window
            phases.append(p)

        for n in (int(x) for x in args.rest.split(",") if x):
            p = Phase(f"REST, concurrency {n}")

            async def rest(n: int = n, p: Phase = p) -> None:
                async with httpx.AsyncClient(timeout=60) as client:
                    await asyncio.gather(
                        *(rest_worker(url, jpeg, args.duration, p, client) for _ in range(n))
                    )

            with measured(p, stats):
                asyncio.run(rest())
            phases.append(p)
    meta = {"info": info, "idle_rss_mb": idle_rss, "frame_bytes": len(jpeg)}
    return phases, meta


# ----------------------------------------------------------------------------- report


def cpu_isa(cpuinfo: str) -> str:
    """The CPU's vector extensions that pick OpenVINO's kernels (int8 without VNNI is slower; bf16
    needs AVX-512 BF16 or AMX, else the float build runs in f32): numbers differ with them."""
    line = next((x for x in cpuinfo.splitlines() if x.startswith("flags")), None)
    if line is None:
        return "unknown ISA"
    flags = set(line.split(":", 1)[1].split())
    names = {"avx2": "AVX2", "avx_vnni": "AVX-VNNI", "avx512f": "AVX-512", "avx512_vnni": "VNNI"}
    names |= {"avx512_bf16": "BF16", "amx_tile": "AMX"}
    have = [name for flag, name in names.items() if flag in flags]
    return " ".join(have) if have else "no AVX2"


def machine() -> str:
    import torch

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    names = (x.split(":", 1)[1].strip() for x in cpuinfo.splitlines() if x.startswith("model name"))
    model = next(names, None)
    cpu = model or platform.processor() or "unknown CPU"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu} ({cpu_isa(cpuinfo)}), {os.cpu_count()} logical CPUs; torch {torch.__version__}; "
        f"1-min load average {load:.1f}"
    )


def table(phases: list[Phase]) -> str:
    rows = [
        "| scenario | frames/s | p50 ms | p95 ms | p99 ms | sent | answered | dropped | errors "
        "| server CPU % | RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in phases:
        rows.append(
            f"| {p.name} | {p.rate:.1f} | {p.pct(50):.1f} | {p.pct(95):.1f} | {p.pct(99):.1f} | {p.sent} | "
            f"{p.done} | {p.dropped} | {p.errors} | {p.cpu_pct:.0f} | {p.rss_mb:.0f} (peak {p.peak_mb:.0f}) |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    phases, meta = run_phases(args)
    single = phases[0]
    s = single.server
    verdict = "meets" if single.rate >= TARGET_FPS else "misses"
    info = meta["info"]
    summary = (
        f"Single stream, lock-step: median **{single.pct(50):.1f} ms** per frame round trip "
        f"(server: decode {s['decode']:.1f} + detect {s['detect']:.1f} + classify {s['classify']:.1f}, "
        f"total {s['total']:.1f} ms), {single.rate:.1f} frames/s: this {verdict} the {TARGET_FPS:.0f} "
        'frames/s target. The comparison with `fer` is measured side by side in "Versus fer (CPU)".'
    )
    md = table(phases)
    setup = (
        f"Model {info['model']['name']} {info['model']['version']} (stem {info['model']['stem']}, "
        f"{info['model']['input_size']}px), detector {info['detector']['kind']} at "
        f"{info['detector']['input_size']}, device {info['device']}, max batch "
        f"{info['limits']['max_batch_size']}, max wait {info['limits']['max_wait_ms']} ms; "
        f"frame {meta['frame_bytes'] / 1024:.0f} KiB JPEG; server idle RSS {meta['idle_rss_mb']:.0f} MiB."
    )
    print("\n" + summary + "\n\n" + md + "\n\n" + setup + "\n" + machine())
    if args.no_write:
        return
    given = list(argv if argv is not None else sys.argv[1:])
    if "--note" in given:  # the note describes this run, not how to repeat it
        i = given.index("--note")
        del given[i : i + 2]
    cmd = "python bench/bench_server.py " + " ".join(given)
    body = (
        f"{SECTION}\n\n"
        "End to end over loopback against a real `emotion-server` subprocess: a 640x480 JPEG with one "
        "face (scikit-image astronaut). Latency is client-side, frame sent -> its reply received; "
        "paced streams send at the target rate whatever the replies, so when the server is slower it "
        "drops older pending frames (newest wins) and counts them. Server CPU is % of one core over "
        "the phase (200 = both cores of a 2-core machine). Client and server share the machine.\n\n"
        + (f"{args.note}\n\n" if args.note else "")
        + f"{summary}\n\n{md}\n\n{setup}\n\nMachine: {machine()}.\n\nReproduce: `{cmd.strip()}`\n"
    )
    write_section(args.out, SECTION, body)
    print(f"\nwrote {SECTION!r} in {args.out}")


if __name__ == "__main__":
    main()
