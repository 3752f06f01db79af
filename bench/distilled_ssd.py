"""The distilled detector (``EMOTION_DETECTOR=distilled``: the half-width SSD distilled from the res10 SSD
proposes, the res10 SSD's region pass confirms and frames each face) against the res10 SSD over the
whole image (``ssd``), and the distilled SSD alone, each as the server builds it (OpenVINO with the
int8 builds on the CPU).

Three questions, in process on the CPU:

1. **The same faces on real photos?** realfaces-dev photos of the held-out people (those
   ``training.photo_crops`` keeps out of training; the distillation never saw them), each whole and
   pasted at a random place and size into a 640x480 frame: of the faces ``ssd`` finds, those each other
   detector finds (IoU >= 0.5), the faces it adds, and the IoU of matched boxes (the framing the
   classifier sees).
2. **No faces where there are none?** scikit-image's sample images without a person (a cat, coins,
   text, a coffee cup, ...): faces each reports.
3. **How fast?** The detect step on ``bench/vs_fer.py``'s 640x480 frames (one face, three, none), the
   detectors alternating call by call, medians.

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
from server.pipeline.runner import build_pipeline  # noqa: E402
from server.pipeline.types import FaceDetector  # noqa: E402
from training.distill_ssd import FaceMatch  # noqa: E402
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
    """``ssd``, ``distilled`` and the distilled SSD alone (its proposer at the server's threshold), each
    built as the server builds it."""
    from server.pipeline.roi import ProposedRegions

    build = {
        k: build_pipeline(Settings(detector=k, warmup=False), "cpu").detector for k in ("ssd", "distilled")
    }
    combined = build["distilled"]
    assert isinstance(combined, ProposedRegions)
    return {"ssd": build["ssd"], "distilled": combined, "distilled SSD alone": combined.proposer}


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


def agreement(ref: FaceDetector, other: FaceDetector, images: list[np.ndarray]) -> dict[str, float]:
    """Of ``ref``'s faces, the share ``other`` finds (IoU >= 0.5), the faces it adds, matched IoUs."""
    match = FaceMatch()
    for img in images:
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        match.add(ref.detect([t])[0].boxes, other.detect([t])[0].boxes)
    return {
        "faces": match.faces,
        "found": match.recall,
        "extra": match.extra,
        "median_iou": match.median_iou(),
        "p10_iou": float(np.percentile(match.ious, 10)) if match.ious else 0.0,
    }


def no_face_counts(dets: dict[str, FaceDetector]) -> list[tuple[str, list[int]]]:
    from skimage import data

    rows = []
    for name in NO_FACE:
        img = getattr(data, name)()
        img = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
        t = torch.from_numpy(np.ascontiguousarray(img.astype(np.uint8))).permute(2, 0, 1)
        rows.append((name, [len(det.detect([t])[0]) for det in dets.values()]))
    return rows


def timings(dets: dict[str, FaceDetector], iters: int) -> dict[str, dict[str, float]]:
    """Median ms of each detector's detect step per ``bench/vs_fer.py`` frame and ``bench/bench_server.py``'s
    astronaut frame, all alternating."""
    from bench_server import frame_jpeg
    from vs_fer import frames as fer_frames

    from server.pipeline.decode import decode_image

    jpegs = {**fer_frames(), "astronaut (bench_server.py)": frame_jpeg()}
    images = {k: decode_image(v, max_pixels=40_000_000).tensor for k, v in jpegs.items()}
    times: dict[str, dict[str, list[float]]] = {f: {d: [] for d in dets} for f in images}
    for i in range(iters + 10):
        for frame, image in images.items():
            for name, det in dets.items():
                t0 = time.perf_counter()
                det.detect([image])
                if i >= 10:
                    times[frame][name].append((time.perf_counter() - t0) * 1000)
    return {f: {d: statistics.median(v) for d, v in row.items()} for f, row in times.items()}


def photo_timings(dets: dict[str, FaceDetector], images: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """Detect-step ms over ``images`` (median, mean, 90th percentile), the detectors alternating image by
    image, and for ``distilled`` the region passes it ran (its doubtful proposals)."""
    from server.pipeline.roi import ProposedRegions

    tensors = [torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1) for img in images]
    times: dict[str, list[float]] = {name: [] for name in dets}
    regions: list[int] = []
    for t in tensors[:10]:  # warm-up
        for det in dets.values():
            det.detect([t])
    for t in tensors:
        for name, det in dets.items():
            refiner = det.refiner if isinstance(det, ProposedRegions) else None
            before = refiner.regions if refiner is not None else 0
            t0 = time.perf_counter()
            det.detect([t])
            times[name].append((time.perf_counter() - t0) * 1000)
            if name == "distilled" and refiner is not None:
                regions.append(refiner.regions - before)
    out = {
        name: {"median": statistics.median(v), "mean": statistics.mean(v), "p90": float(np.percentile(v, 90))}
        for name, v in times.items()
    }
    if regions:
        out["distilled"]["with_regions"] = float(np.mean([r > 0 for r in regions]))
        out["distilled"]["max_regions"] = float(max(regions))
    return out


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    dets = detectors()
    images = frames(args.data, args.photos)
    no_face = no_face_counts(dets)
    ms = timings(dets, args.iters)
    per_photo = photo_timings(dets, images) if images else {}
    cmd = ("python bench/distilled_ssd.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    names = list(dets)
    lines = [SECTION, "", f"Machine: {machine()}.", ""]
    if images:
        lines += [
            f"Held-out realfaces-dev photos ({len(images)} images: each photo whole and pasted into a "
            "640x480 frame), against the faces `ssd` finds:",
            "",
            "| detector | faces of `ssd` found (IoU >= 0.5) | faces added | matched IoU: median | 10th pct |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name in names[1:]:
            a = agreement(dets["ssd"], dets[name], images)
            lines.append(
                f"| {name} | {a['found']:.1%} of {a['faces']:.0f} | {a['extra']:.0f} | {a['median_iou']:.3f} "
                f"| {a['p10_iou']:.3f} |"
            )
        lines.append("")
    lines += [
        "Faces reported on scikit-image samples without a person:",
        "",
        "| image | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
        *[f"| {n} | " + " | ".join(str(c) for c in counts) + " |" for n, counts in no_face],
        "",
        f"Detect step on `bench/vs_fer.py`'s 640x480 frames and `bench/bench_server.py`'s, ms, medians of "
        f"{args.iters} alternating calls:",
        "",
        "| frame | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
        *[f"| {f} | " + " | ".join(f"{row[n]:.2f}" for n in names) + " |" for f, row in ms.items()],
        "",
    ]
    if per_photo:
        d = per_photo["distilled"]
        lines += [
            f"Detect step over the {len(images)} held-out images above, the detectors alternating image by "
            f"image, ms (`distilled` ran region passes for {d.get('with_regions', 0.0):.0%} of them, at most "
            f"{d.get('max_regions', 0.0):.0f} in one):",
            "",
            "| detector | median | mean | 90th pct |",
            "| --- | ---: | ---: | ---: |",
            *[
                f"| {n} | {r['median']:.2f} | {r['mean']:.2f} | {r['p90']:.2f} |"
                for n, r in per_photo.items()
            ],
            "",
        ]
    lines += [
        f"Reproduce: `{cmd}`",
    ]
    body = "\n".join(lines) + "\n"
    print(body)
    if not args.no_write:
        write_section(args.out, SECTION, body)


if __name__ == "__main__":
    main()
