"""The distilled half-width SSD against the original res10 SSD it was distilled from, as the server runs
each (``EMOTION_SSD_WEIGHTS=distilled`` / ``original``; OpenVINO with their int8 builds on the CPU).

Three questions, in process on the CPU:

1. **The same faces on real photos?** realfaces-dev photos of the held-out people (those
   ``training.photo_crops`` keeps out of training; the distillation never saw them), each whole and
   pasted at a random place and size (face 40-300 px) into a 640x480 frame: the original's faces the
   distilled one finds (IoU >= 0.5), the faces it adds, and the IoU of matched boxes (the framing the
   classifier sees).
2. **No faces where there are none?** scikit-image's sample images without a person (a cat, coins,
   text, a coffee cup, ...): faces each reports.
3. **How fast?** The whole-image detect step on the one-face 640x480 frame of ``bench/vs_fer.py``,
   the two detectors alternating call by call, medians.

    python bench/distilled_ssd.py                   # ~2 min; writes its section of docs/benchmarks.md
    python bench/distilled_ssd.py --photos 200 --no-write
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from bench_server import machine
from docsection import write_section  # bench/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.config import Settings  # noqa: E402
from server.pipeline.boxes import box_iou  # noqa: E402
from server.pipeline.runner import build_pipeline  # noqa: E402
from server.pipeline.types import FaceDetector  # noqa: E402
from training.photo_crops import is_heldout, person_of  # noqa: E402

SECTION = "## Distilled face detector (CPU)"
REALFACES = REPO.parent / "shared" / "data" / "realfaces-dev"
#: scikit-image samples without a person in them.
NO_FACE = ("chelsea", "cat", "coffee", "coins", "rocket", "text", "page", "horse", "moon", "clock")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REALFACES)
    p.add_argument("--photos", type=int, default=600, help="held-out photos used (each whole and pasted)")
    p.add_argument("--iters", type=int, default=200, help="timed calls per detector")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true")
    return p


def detectors() -> dict[str, FaceDetector]:
    """The server's whole-image detector for each weights setting, built as the server builds it."""
    return {
        name: build_pipeline(Settings(ssd_weights=name, warmup=False), "cpu").detector
        for name in ("original", "distilled")
    }


def frames(data: Path, n: int) -> list[np.ndarray]:
    """RGB photos of held-out people, whole and pasted into 640x480 frames (seeded)."""
    files = sorted(p for p in data.glob("*/*.jpg") if is_heldout(person_of(p), 0.5))
    rng = np.random.default_rng(0)
    pick = sorted(rng.choice(len(files), size=min(n, len(files)), replace=False)) if files else []
    out = []
    for i in pick:
        bgr = cv2.imread(str(files[i]))
        if bgr is None:
            continue
        photo = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        out.append(photo)
        scale = float(np.exp(rng.uniform(np.log(0.2), np.log(1.3))))
        small = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)[:480, :640]
        frame = cv2.GaussianBlur(rng.integers(40, 220, (480, 640, 3), dtype=np.uint8), (0, 0), 4)
        y, x = rng.integers(0, 481 - small.shape[0]), rng.integers(0, 641 - small.shape[1])
        frame[y : y + small.shape[0], x : x + small.shape[1]] = small
        out.append(frame)
    return out


def agreement(dets: dict[str, FaceDetector], images: list[np.ndarray]) -> dict[str, float]:
    ref_faces = found = extra = 0
    ious: list[float] = []
    for img in images:
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        ref, got = (dets[k].detect([t])[0].boxes for k in ("original", "distilled"))
        ref_faces += len(ref)
        if not len(ref) or not len(got):
            extra += len(got)
            continue
        iou = box_iou(ref, got)
        best = iou.max(1).values
        found += int((best >= 0.5).sum())
        ious += best[best >= 0.5].tolist()
        extra += int((iou.max(0).values < 0.5).sum())
    return {
        "images": len(images),
        "faces": ref_faces,
        "found": found / max(ref_faces, 1),
        "extra": extra,
        "median_iou": float(np.median(ious)) if ious else 0.0,
        "p10_iou": float(np.percentile(ious, 10)) if ious else 0.0,
    }


def no_face_counts(dets: dict[str, FaceDetector]) -> list[tuple[str, int, int]]:
    from skimage import data

    rows = []
    for name in NO_FACE:
        img = getattr(data, name)()
        img = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
        t = torch.from_numpy(np.ascontiguousarray(img.astype(np.uint8))).permute(2, 0, 1)
        rows.append((name, len(dets["original"].detect([t])[0]), len(dets["distilled"].detect([t])[0])))
    return rows


def timings(dets: dict[str, FaceDetector], iters: int) -> dict[str, float]:
    from vs_fer import frames as fer_frames

    from server.pipeline.decode import decode_image

    image = decode_image(fer_frames()["one face"], max_pixels=40_000_000).tensor
    times: dict[str, list[float]] = {k: [] for k in dets}
    for _ in range(10):
        for det in dets.values():
            det.detect([image])
    for _ in range(iters):
        for name, det in dets.items():
            t0 = time.perf_counter()
            det.detect([image])
            times[name].append((time.perf_counter() - t0) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    dets = detectors()
    precision = {k: getattr(getattr(d, "model", None), "precision", "?") for k, d in dets.items()}
    images = frames(args.data, args.photos)
    agree = agreement(dets, images) if images else None
    no_face = no_face_counts(dets)
    ms = timings(dets, args.iters)
    cmd = ("python bench/distilled_ssd.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    lines = [SECTION, "", f"Machine: {machine()}.", ""]
    if agree:
        lines += [
            f"Held-out realfaces-dev photos ({agree['images']:.0f} images: each photo whole and pasted into "
            f"a 640x480 frame): of the original's {agree['faces']:.0f} faces the distilled SSD finds "
            f"**{agree['found']:.1%}** (IoU >= 0.5), adds {agree['extra']:.0f}; matched boxes' IoU median "
            f"{agree['median_iou']:.3f}, 10th percentile {agree['p10_iou']:.3f}.",
            "",
        ]
    lines += [
        "Faces reported on scikit-image samples without a person:",
        "",
        "| image | original | distilled |",
        "| --- | ---: | ---: |",
        *[f"| {n} | {a} | {b} |" for n, a, b in no_face],
        "",
        f"Whole-image detect step, one-face 640x480 frame, medians of {args.iters} alternating calls: "
        f"original ({precision['original']}) {ms['original']:.2f} ms, distilled ({precision['distilled']}) "
        f"**{ms['distilled']:.2f} ms** ({ms['original'] / ms['distilled']:.2f}x faster).",
        "",
        f"Reproduce: `{cmd}`",
    ]
    body = "\n".join(lines) + "\n"
    print(body)
    if not args.no_write:
        write_section(args.out, SECTION, body)


if __name__ == "__main__":
    main()
