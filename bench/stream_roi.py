"""One WebSocket stream in lock-step, side by side for several ``EMOTION_STREAM_REDETECT_EVERY`` values.

One real ``emotion-server`` subprocess per value (default configuration otherwise, except the
per-stream frame cap, ``EMOTION_STREAM_MAX_FPS``: 30 by default, lifted to ``--max-fps`` so that
the measurement shows what a stream could do rather than the cap), all started
first, then driven in rounds: each round sends ``--frames`` frames in lock-step (send, wait for
the reply) to each server in turn, so background load hits every setting alike. The frames are
a webcam-like 640x480 sequence: the one-face frame of ``bench/vs_fer.py`` with the face drifting a
few pixels per frame (as a seated user's does), so region passes have to follow it.

Reports per setting: median and p95 frame time (client side, send -> reply), frames/s over the
whole run, and the server's own median detect time. ``1`` is the whole frame every time (the
behaviour before region passes). Then, in process, whether a region pass keeps faces of each
width that a whole-frame pass found (realfaces-dev faces, as in ``bench/smallest_face.py``), and
whether the region pass changes the class the server reports (labelled realfaces-dev photos).
Writes the "## Streams: region passes (CPU)" section of docs/benchmarks.md unless ``--no-write``.

    python bench/stream_roi.py                          # ~1.5 min
    python bench/stream_roi.py --every 1,10 --rounds 3 --no-write
"""

from __future__ import annotations

import os

# Before torch loads its OpenMP runtime (the in-process part): spinning idle OpenMP threads would
# take the cores from OpenVINO's, as in the server (server/cli.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import asyncio
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from docsection import write_section  # bench/ is on sys.path when run as a script
from PIL import Image
from websockets.asyncio.client import connect

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Streams: region passes (CPU)"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--every", default="1,5,10,20", help="EMOTION_STREAM_REDETECT_EVERY values")
    p.add_argument(
        "--max-fps",
        type=float,
        default=1000.0,
        help="EMOTION_STREAM_MAX_FPS for the servers: the default cap (30) would bound what is measured",
    )
    p.add_argument("--rounds", type=int, default=8, help="rounds; each sends --frames to every server")
    p.add_argument("--frames", type=int, default=30, help="lock-step frames per server and round")
    p.add_argument("--widths", default="40,48,64,100,160", help="face widths for the follow table")
    p.add_argument("--roi-sizes", default="96,128", help="region-pass input sizes compared (square)")
    p.add_argument("--accuracy-photos", type=int, default=600, help="labelled photos for the accuracy check")
    p.add_argument("--photos", type=int, default=80, help="realfaces-dev photos for the follow table")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--note", default="", help="a sentence about the conditions, written above the table")
    return p


def drifting_frames(n: int = 60) -> list[bytes]:
    """640x480 JPEGs: vs_fer's one-face scene with the face moving back and forth, 3 px per frame."""
    from vs_fer import scene

    out = []
    for k in range(n):
        dx = 3 * (k if k < n // 2 else n - k)
        buf = io.BytesIO()
        Image.fromarray(scene(((200 + dx, 120 + dx // 3, 1.0),))).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


async def lockstep(url: str, frames: list[bytes]) -> tuple[list[float], list[float], list[int]]:
    """Client frame times, server detect times and face counts for ``frames`` sent one by one."""
    times, detect, faces = [], [], []
    async with connect(url, max_size=None) as ws:
        for data in frames:
            t0 = time.perf_counter()
            await ws.send(data)
            reply = json.loads(await ws.recv())
            times.append((time.perf_counter() - t0) * 1000.0)
            detect.append(float(reply["timing_ms"]["detect"]))
            faces.append(len(reply["faces"]))
    return times, detect, faces


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from serverproc import ServerProcess

    values = [int(v) for v in args.every.split(",")]
    frames = drifting_frames()
    load_before = os.getloadavg()
    servers = {
        v: ServerProcess(
            env={"EMOTION_STREAM_REDETECT_EVERY": str(v), "EMOTION_STREAM_MAX_FPS": str(args.max_fps)}
        ).start()
        for v in values
    }
    res: dict[int, dict[str, list[float]]] = {v: {"ms": [], "detect": [], "faces": []} for v in values}
    wall = dict.fromkeys(values, 0.0)
    try:
        for s in servers.values():  # warm-up: one untimed round each
            asyncio.run(lockstep(s.ws_url, frames[:10]))
        for r in range(args.rounds):
            for v in values if r % 2 == 0 else values[::-1]:
                seq = [frames[(r * args.frames + i) % len(frames)] for i in range(args.frames)]
                t0 = time.perf_counter()
                ms, det, faces = asyncio.run(lockstep(servers[v].ws_url, seq))
                wall[v] += time.perf_counter() - t0
                res[v]["ms"] += ms
                res[v]["detect"] += det
                res[v]["faces"] += [float(f) for f in faces]
        rss = {v: s.rss_mb() for v, s in servers.items()}
    finally:
        for s in servers.values():
            s.stop()
    return {"res": res, "wall": wall, "rss": rss, "load": (load_before, os.getloadavg())}


def follow_rates(
    widths: list[int], n_photos: int, sizes: list[int]
) -> tuple[dict[int, list[tuple[int, int, float, float]]], dict[int, float], str]:
    """Per region-pass input size and face width: of the faces a whole-frame pass finds
    (``bench/smallest_face.py``'s pasted realfaces-dev faces in 640x480 frames), the share a
    region pass around that box finds again, and the median IoU of the two boxes; and the median
    time of a region pass per size (sizes alternating call by call). In process, on the server's
    pipeline (default settings) and region detectors built as the server builds its own."""
    import time

    import torch
    from smallest_face import REALFACES, iou, photos, scenes

    from server.api.options import default_options
    from server.config import Settings
    from server.pipeline.backend import compile_module, resolve_backend
    from server.pipeline.decode import DecodedImage
    from server.pipeline.detect import DetectorOptions, SSDFaceDetector, build_detector
    from server.pipeline.roi import RegionDetector, RegionPlanner
    from server.pipeline.runner import Job, build_pipeline

    settings = Settings()
    pipe = build_pipeline(settings, "cpu")
    backend = resolve_backend("auto", "cpu")
    roi = {}
    for size in sizes:
        det = build_detector("ssd", DetectorOptions(input_size=(size, size)))
        assert isinstance(det, SSDFaceDetector)
        example = det.preprocess([torch.zeros((3, size, size), dtype=torch.uint8)])
        # the server's build: region passes run float (server.pipeline.runner.build_pipeline)
        det.model = compile_module(det.model, example, backend)
        roi[size] = RegionDetector(det)
    reference = build_detector("ssd", DetectorOptions(score_threshold=0.5, min_face_size=1))
    assert isinstance(reference, SSDFaceDetector)
    faces, source = photos(REALFACES, n_photos)
    rows: dict[int, list[tuple[int, int, float, float]]] = {s: [] for s in sizes}
    times: dict[int, list[float]] = {s: [] for s in sizes}
    for w, items in scenes(reference, faces, widths, 0.5).items():
        found = 0
        again = dict.fromkeys(sizes, 0)
        ious: dict[int, list[float]] = {s: [] for s in sizes}
        for frame, box in items:
            tensor = torch.from_numpy(frame).permute(2, 0, 1)
            whole = pipe.run([Job(DecodedImage(tensor, 0.0), default_options(settings))])[0].faces
            hit = [f for f in whole if float(iou(torch.tensor([f.box]), box).max()) >= 0.4]
            if not hit:
                continue
            found += 1
            planner = RegionPlanner(10)
            planner.observe([hit[0].box], None)
            regions = planner.regions(640, 480)
            assert regions is not None
            for size, detector in roi.items():
                t0 = time.perf_counter()
                redo = detector.detect([tensor], [regions], 0.5, 10)[0]
                times[size].append((time.perf_counter() - t0) * 1000.0)
                if len(redo):
                    overlap = float(iou(redo.boxes, torch.tensor(hit[0].box)).max())
                    again[size] += int(overlap >= 0.4)
                    ious[size].append(overlap)
        for size in sizes:
            m = float(np.median(ious[size])) if ious[size] else float("nan")
            rows[size].append((w, found, again[size] / max(found, 1), m))
    return rows, {s: float(np.median(t)) for s, t in times.items()}, source


def region_scores(n_photos: int) -> dict[str, float]:
    """Does a region pass change what the classifier says? realfaces-dev photos (labelled, a random
    ``n_photos``), each scaled to fit 560x400 and pasted into a 640x480 frame: the first face of a
    whole-frame pass and of a region pass around it, classified by the server's pipeline (default
    settings). Returns accuracy against the labels (``shared.emotions``' mapping; photos whose label
    is no FER2013 class are skipped) for both, how often they agree, and the boxes' median IoU."""
    import csv

    import cv2
    import torch
    from smallest_face import REALFACES

    from server.api.options import default_options
    from server.config import Settings
    from server.pipeline.boxes import box_iou
    from server.pipeline.decode import DecodedImage
    from server.pipeline.roi import RegionPlanner
    from server.pipeline.runner import Job, build_pipeline
    from shared.emotions import canonical_emotion

    settings = Settings()
    pipe, options = build_pipeline(settings, "cpu"), default_options(settings)
    with (REALFACES / "labels.csv").open() as f:
        rows = [(r["image"], canonical_emotion(r["emotion"])) for r in csv.DictReader(f)]
    rows = [(path, label) for path, label in rows if label in pipe.classifier.classes]
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(rng.integers(60, 200, (480, 640, 3), dtype=np.uint8), (0, 0), 3)
    n = right_whole = right_region = agree = 0
    ious = []
    for k in rng.choice(len(rows), min(n_photos, len(rows)), replace=False):
        path, label = rows[int(k)]
        photo = cv2.cvtColor(cv2.imread(str(REALFACES / path)), cv2.COLOR_BGR2RGB)
        scale = min(400 / photo.shape[0], 560 / photo.shape[1])
        photo = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        frame = background.copy()
        frame[40 : 40 + photo.shape[0], 40 : 40 + photo.shape[1]] = photo
        image = DecodedImage(torch.from_numpy(frame).permute(2, 0, 1), 0.0)
        whole = pipe.run([Job(image, options)])[0].faces
        if not whole:
            continue
        planner = RegionPlanner(10)
        planner.observe([whole[0].box], None)
        regions = planner.regions(640, 480)
        assert regions is not None
        region = pipe.run([Job(image, options, regions)])[0].faces
        if not region:
            continue
        n += 1
        a, b = (pipe.classifier.classes[int(np.argmax(f.probs))] for f in (whole[0], region[0]))
        right_whole += a == label
        right_region += b == label
        agree += a == b
        ious.append(float(box_iou(torch.tensor([whole[0].box]), torch.tensor([region[0].box]))[0, 0]))
    return {
        "faces": n,
        "whole": right_whole / max(n, 1),
        "region": right_region / max(n, 1),
        "agree": agree / max(n, 1),
        "iou": float(np.median(ious)) if ious else float("nan"),
    }


def report(r: dict[str, Any], args: argparse.Namespace) -> str:
    rows = [
        "| redetect every | frames | median ms | p95 ms | frames/s | server detect median ms "
        "| frames with the face | RSS MiB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v, d in r["res"].items():
        n = len(d["ms"])
        rows.append(
            f"| {v}{' (whole frame every time)' if v <= 1 else ''} | {n} | {np.median(d['ms']):.1f} | "
            f"{np.percentile(d['ms'], 95):.1f} | **{n / r['wall'][v]:.1f}** | {np.median(d['detect']):.1f} | "
            f"{np.mean(np.array(d['faces']) >= 1):.0%} | {r['rss'][v]:.0f} |"
        )
    (b1, _, _), (a1, _, _) = r["load"]
    return (
        "\n".join(rows) + f"\n\n{args.rounds} rounds x {args.frames} lock-step frames per setting, settings "
        f"alternating round by round (order reversed every other round); 1-min load average {b1:.1f} "
        f"before, {a1:.1f} after."
    )


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    sys.path.insert(0, str(REPO))
    r = measure(args)
    from bench_server import machine

    table = report(r, args)
    widths = [int(w) for w in args.widths.split(",")]
    sizes = [int(v) for v in args.roi_sizes.split(",")]
    follow, pass_ms, source = follow_rates(widths, args.photos, sizes)
    from server.pipeline.roi import ROI_INPUT

    table += (
        "\n\nDoes a region pass keep a face once the whole-frame pass has found it? Faces from "
        f"{source} pasted into 640x480 frames at each width (`bench/smallest_face.py`'s scenes); of "
        "those the whole-frame pass finds, the share the region pass around its box finds again "
        "(IoU >= 0.4 with it) and the median IoU of the two boxes, per region-pass input size (the "
        f"server uses {ROI_INPUT[0]}x{ROI_INPUT[1]}); last row: median ms per region pass (one face), "
        "sizes alternating:\n\n"
        "| face width | found whole | "
        + " | ".join(f"kept at {v}x{v} (median IoU)" for v in sizes)
        + " |\n| ---: | ---: |"
        + " ---: |" * len(sizes)
        + "\n"
    )
    for k, w in enumerate(widths):
        found = follow[sizes[0]][k][1]
        cells = " | ".join(f"{follow[v][k][2]:.0%} ({follow[v][k][3]:.2f})" for v in sizes)
        table += f"| {w} px | {found} | {cells} |\n"
    table += "| ms per region pass | | " + " | ".join(f"{pass_ms[v]:.1f}" for v in sizes) + " |"
    acc = region_scores(args.accuracy_photos)
    table += (
        "\n\nDoes a region pass change the emotion the server reports? "
        f"{acc['faces']} labelled realfaces-dev photos (random, labels that are FER2013 classes), each in a "
        "640x480 frame: the first face's class from a whole-frame pass and from a region pass around it "
        f"(the region's box has median IoU {acc['iou']:.2f} with the whole-frame one): accuracy "
        f"**{acc['whole']:.1%} whole-frame vs {acc['region']:.1%} region pass**, the same class for "
        f"{acc['agree']:.1%} of the faces."
    )
    print(table + "\n" + machine())
    if args.no_write:
        return
    given = list(argv if argv is not None else sys.argv[1:])
    if "--note" in given:
        i = given.index("--note")
        del given[i : i + 2]
    cmd = ("python bench/stream_roi.py " + " ".join(given)).strip()
    text = (
        f"{SECTION}\n\nOne WebSocket stream in lock-step (send a 640x480 JPEG, wait for its reply, repeat), "
        "a real `emotion-server` per `EMOTION_STREAM_REDETECT_EVERY` value, default configuration "
        f"otherwise except `EMOTION_STREAM_MAX_FPS={args.max_fps:g}` (the default cap of 30 frames/s per "
        "stream would otherwise be what is measured); the face drifts 3 px per frame. Between "
        "whole-frame detections the server only runs the detector around the previous frame's faces "
        "(`server/pipeline/roi.py`).\n\n"
        + (f"{args.note}\n\n" if args.note else "")
        + f"{table}\n\nMachine: {machine()}.\n\nReproduce: `{cmd}`\n"
    )
    write_section(args.out, SECTION, text)
    print(f"\nwrote {SECTION!r} in {args.out}")


if __name__ == "__main__":
    main()
