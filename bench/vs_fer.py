"""Side by side with the ``fer`` package on this CPU: our REST round trip vs ``FER().detect_emotions``.

The peer a CPU user would compare us with is ``fer`` (one ``pip install``, one call per
frame). This script installs it on first use into its own git-ignored virtualenv
(``.fer/venv``: the ``fer==25.10.3`` wheel with ``--no-deps``, then ``tensorflow-cpu``,
``opencv-python-headless<5``, ``pandas``, ``requests``, ``Pillow``), starts our server as a
real subprocess in its default configuration, and times both on the same 640x480 JPEG
frames (one face, three faces, no face) in one run, alternating call by call so that
background load hits both alike:

* ours: ``POST /v1/predict`` with the JPEG bytes, round trip on a kept-alive connection
  (decode, detect, crop, classify, JSON, loopback HTTP all included);
* ``fer``: ``FER()`` (its default Haar detector) ``.detect_emotions(frame)`` on the frame
  already decoded to a BGR array (the JPEG decode is not charged to it).

Prints medians, p95 and the ratio fer/ours, and (unless ``--no-write``) writes the
"## Versus fer (CPU)" section of docs/benchmarks.md with the machine's load.

    python bench/vs_fer.py                      # ~2 min (+ the peer's install the first time)
    python bench/vs_fer.py --iters 20 --no-write
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from docsection import write_section  # bench/ is on sys.path when run as a script
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
FER_DIR = REPO / ".fer"
FER_VERSION = "25.10.3"
FER_DEPS = ["tensorflow-cpu", "opencv-python-headless<5", "pandas", "requests", "Pillow"]
SECTION = "## Versus fer (CPU)"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=40, help="timed calls per frame and side (after warm-up)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per frame and side")
    p.add_argument("--env", action="append", default=[], help="EMOTION_X=Y for the server (default: none)")
    p.add_argument(
        "--reference",
        action="store_true",
        help="also run a second server on the torch reference path (EMOTION_BACKEND=torch), alternating",
    )
    p.add_argument(
        "--second",
        action="append",
        default=[],
        help="EMOTION_X=Y: the second server (as --reference) with these variables instead, e.g. "
        "EMOTION_CPU_PRECISION=float",
    )
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--note", default="", help="a sentence about the conditions, written above the table")
    return p


# ----------------------------------------------------------------------------- the peer


def fer_python() -> Path:
    """The peer's interpreter, installing it into ``.fer/venv`` the first time."""
    venv = FER_DIR / "venv"
    python = venv / "bin" / "python"
    marker = venv / f".fer-{FER_VERSION}-installed"
    if marker.exists():
        return python
    print(f"installing fer=={FER_VERSION} into {venv} (first use; several minutes)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    wheels = FER_DIR / "wheels"
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(
        [str(python), "-m", "pip", "download", "-q", "--no-deps", f"fer=={FER_VERSION}", "-d", str(wheels)],
        check=True,
    )
    wheel = next(wheels.glob(f"fer-{FER_VERSION}-*.whl"))
    subprocess.run([*pip, "--no-deps", str(wheel)], check=True)
    subprocess.run([*pip, *FER_DEPS], check=True)
    marker.write_text("ok\n")
    return python


class FerWorker:
    """``bench/fer_worker.py`` in the peer's venv, driven line by line over pipes."""

    def __init__(self, frames: dict[str, Path]) -> None:
        self.proc = subprocess.Popen(
            [str(fer_python()), str(REPO / "bench" / "fer_worker.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        self.info = self.call({"load": {k: str(v) for k, v in frames.items()}})

    def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        stdin.write(json.dumps(msg) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"fer worker exited with {self.proc.wait()}")
        return dict(json.loads(line))

    def run(self, name: str) -> tuple[float, int]:
        r = self.call({"run": name})
        return float(r["ms"]), int(r["faces"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


# ----------------------------------------------------------------------------- frames


def scene(faces: tuple[tuple[int, int, float], ...]) -> np.ndarray:
    """640x480 RGB: scikit-image's astronaut face pasted at (x, y, scale) on a textured background
    (the three-face layout is bench/bench_detect.py's frame)."""
    import cv2
    from skimage import data

    face = data.astronaut()[20:220, 140:320]
    rng = np.random.default_rng(0)
    out = cv2.GaussianBlur(rng.integers(60, 200, (480, 640, 3), dtype=np.uint8), (0, 0), 3)
    for x, y, s in faces:
        f = cv2.resize(face, None, fx=s, fy=s)
        out[y : y + f.shape[0], x : x + f.shape[1]] = f
    return out


def frames() -> dict[str, bytes]:
    """640x480 JPEGs (quality 85) with one face, three faces and none.

    Both sides find exactly that many faces in each (checked and printed per run): the server
    benchmark's astronaut frame is not used here because `fer`'s Haar cascade finds a second,
    false face in it, which would charge `fer` for a face it should not have classified.
    """

    def jpeg(rgb: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=85)
        return buf.getvalue()

    return {
        "one face": jpeg(scene(((230, 120, 1.0),))),
        "three faces": jpeg(scene(((20, 40, 1.0), (250, 150, 0.7), (450, 60, 0.9)))),
        "no face": jpeg(scene(())),
    }


# ----------------------------------------------------------------------------- measurement


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from serverproc import ServerProcess, describe

    jpegs = frames()
    FER_DIR.mkdir(exist_ok=True)
    paths = {}
    for name, data in jpegs.items():
        paths[name] = FER_DIR / f"frame-{name.replace(' ', '-')}.jpg"
        paths[name].write_bytes(data)
    env = dict(kv.split("=", 1) for kv in args.env)
    load_before = os.getloadavg()
    fer = FerWorker(paths)
    ours: dict[str, list[float]] = {k: [] for k in jpegs}
    theirs: dict[str, list[float]] = {k: [] for k in jpegs}
    faces: dict[str, tuple[int, int]] = {}
    stages: dict[str, dict[str, list[float]]] = {k: {} for k in jpegs}
    second = dict(kv.split("=", 1) for kv in args.second) or (
        {"EMOTION_BACKEND": "torch"} if args.reference else {}
    )
    ref_server = ServerProcess(env={**env, **second}).start() if second else None
    ref_ms: dict[str, list[float]] = {k: [] for k in jpegs}
    torch_ms: dict[str, list[float]] = {}
    try:
        with ServerProcess(env=env) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            info = client.get("/v1/info", headers=server.auth()).json()
            idle_rss = server.rss_mb()
            headers = {"content-type": "image/jpeg", **server.auth()}
            t_start = time.monotonic()
            for i in range(args.warmup + args.iters):
                for name, data in jpegs.items():
                    t0 = time.perf_counter()
                    resp = client.post("/v1/predict", content=data, headers=headers)
                    ms = (time.perf_counter() - t0) * 1000.0
                    resp.raise_for_status()
                    body = resp.json()
                    fer_ms, fer_faces = fer.run(name)
                    if ref_server is not None:
                        t0 = time.perf_counter()
                        ref = client.post(ref_server.url + "/v1/predict", content=data, headers=headers)
                        ref_ms[name].append((time.perf_counter() - t0) * 1000.0)
                        ref.raise_for_status()
                    if i < args.warmup:
                        if ref_server is not None:
                            ref_ms[name].pop()
                        continue
                    ours[name].append(ms)
                    theirs[name].append(fer_ms)
                    faces[name] = (len(body["faces"]), fer_faces)
                    for k, v in body["timing_ms"].items():
                        stages[name].setdefault(k, []).append(v)
            wall = time.monotonic() - t_start
            rss = server.rss_mb()
            if ref_server is not None:
                torch_ms = ref_ms
    finally:
        fer.close()
        if ref_server is not None:
            ref_server.stop()
    return {
        "ours": ours,
        "fer": theirs,
        "faces": faces,
        "stages": {n: {k: float(np.median(v)) for k, v in s.items()} for n, s in stages.items()},
        "server": describe(info),
        "idle_rss": idle_rss,
        "rss": rss,
        "load": (load_before, os.getloadavg()),
        "wall": wall,
        "fer_version": fer.info.get("fer", "?"),
        "torch": torch_ms,
        "second": " ".join(f"{k}={v}" for k, v in second.items()),
    }


def report(r: dict[str, Any]) -> tuple[str, str]:
    rows = [
        "| frame | ours p50 ms | ours p95 ms | fer p50 ms | fer p95 ms | fer/ours (p50) | faces ours / fer "
        "| our server: decode / detect / classify / total ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name in r["ours"]:
        o, f = r["ours"][name], r["fer"][name]
        s = r["stages"][name]
        rows.append(
            f"| {name} | {pct(o, 50):.1f} | {pct(o, 95):.1f} | {pct(f, 50):.1f} | {pct(f, 95):.1f} | "
            f"**{pct(f, 50) / pct(o, 50):.2f}x** | {r['faces'][name][0]} / {r['faces'][name][1]} | "
            f"{s['decode']:.1f} / {s['detect']:.1f} / {s['classify']:.1f} / {s['total']:.1f} |"
        )
    if r["torch"]:
        rows += [
            "",
            f"Same run, a second server with `{r['second']}`, its calls alternating with the two above:",
            "",
            "| frame | second server p50 ms | second server p95 ms | default p50 ms | speed-up |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, t in r["torch"].items():
            o = r["ours"][name]
            rows.append(
                f"| {name} | {pct(t, 50):.1f} | {pct(t, 95):.1f} | {pct(o, 50):.1f} | "
                f"{pct(t, 50) / pct(o, 50):.2f}x |"
            )
    one = "one face"
    ratio = pct(r["fer"][one], 50) / pct(r["ours"][one], 50)
    verdict = "meets" if ratio >= 3.0 else "misses"
    summary = (
        f"One-face 640x480 frame: our REST round trip median **{pct(r['ours'][one], 50):.1f} ms**, "
        f"`fer` {pct(r['fer'][one], 50):.1f} ms: we are **{ratio:.2f}x** faster, which {verdict} "
        "the 3x target."
    )
    (l1b, _, _), (l1a, _, _) = r["load"]
    setup = (
        f"Server: {r['server']}; idle RSS {r['idle_rss']:.0f} MiB, {r['rss']:.0f} MiB after. "
        f"`fer` {r['fer_version']} (TensorFlow CPU, Haar detector). "
        f"{len(r['ours'][one])} timed calls per frame and side, {r['wall']:.0f} s; "
        f"1-min load average {l1b:.1f} before, {l1a:.1f} after."
    )
    return summary, "\n".join(rows) + "\n\n" + setup


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    r = measure(args)
    summary, body = report(r)
    from bench_server import machine

    print("\n" + summary + "\n\n" + body + "\n" + machine())
    if args.no_write:
        return
    given = [a for a in (argv if argv is not None else sys.argv[1:])]
    if "--note" in given:
        i = given.index("--note")
        del given[i : i + 2]
    cmd = ("python bench/vs_fer.py " + " ".join(given)).strip()
    text = (
        f"{SECTION}\n\n"
        "Our `POST /v1/predict` round trip (JPEG bytes in, JSON out, loopback HTTP, a real "
        "`emotion-server` process in its default configuration) against the `fer` package's "
        "`FER().detect_emotions(frame)` on the same frame already decoded (its JPEG decode is not charged "
        "to it), alternating call by call in one run. Client, server and `fer` share the machine.\n\n"
        + (f"{args.note}\n\n" if args.note else "")
        + f"{summary}\n\n{body}\n\nMachine: {machine()}.\n\nReproduce: `{cmd}`\n"
    )
    write_section(args.out, SECTION, text)
    print(f"\nwrote {SECTION!r} in {args.out}")


if __name__ == "__main__":
    main()
