"""Accuracy and cost of the server's classifier paths: torch (reference) vs OpenVINO, flip TTA off/on.

PrivateTest as the server answers ``POST /v1/predict?detect=false`` for a 48x48 crop: each
face goes through the server's own whole-image crop (to the checkpoint's input size) and
``EmotionClassifier.predict``, in batches (batching does not change a face's answer).
Also times ``predict`` at batch 1 (one face), the per-face CPU cost of flip TTA included.
Writes the "## Classifier paths" section of docs/benchmarks.md.

    python bench/backend_parity.py                            # ~2-4 min on 2 cores
    python bench/backend_parity.py --checkpoint runs/x/best.safetensors --no-write
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from docsection import write_section  # bench/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.model.checkpoint import DEFAULT_CHECKPOINT  # noqa: E402
from server.pipeline.classify import EmotionClassifier  # noqa: E402
from server.pipeline.crop import crop_whole_images  # noqa: E402
from shared.emotions import EMOTIONS  # noqa: E402

SECTION = "## Classifier paths"
FER2013 = Path(os.environ.get("FER2013_PATH", REPO.parent / "shared" / "data" / "fer2013.tar.gz"))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--data", type=Path, default=FER2013)
    p.add_argument("--backends", default="torch,openvino")
    p.add_argument("--threads", type=int, default=None, help="torch/OpenVINO threads (default: all)")
    p.add_argument("--iters", type=int, default=60, help="timed batch-1 calls per path")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true")
    return p


def private_test(data: Path) -> tuple[torch.Tensor, np.ndarray]:
    from training.data import load_dataset

    ds = load_dataset(data, size=48).subset("private")
    return torch.from_numpy(ds.images).unsqueeze(1), ds.labels


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    faces48, labels = private_test(args.data)
    rows = []
    probs: dict[tuple[str, bool], torch.Tensor] = {}
    for backend in args.backends.split(","):
        for tta in (False, True):
            clf = EmotionClassifier(
                args.checkpoint, "cpu", backend=backend, threads=args.threads, flip_tta=tta
            )
            crops = torch.cat(
                [crop_whole_images(list(chunk.float()), clf.input_size) for chunk in faces48.split(512)]
            )
            p = torch.cat([clf.predict(chunk) for chunk in crops.split(256)])
            probs[(backend, tta)] = p
            y = np.array([clf.classes.index(EMOTIONS[i]) for i in labels])
            acc = float((p.argmax(1).numpy() == y).mean())
            one = crops[:1]
            for _ in range(5):
                clf.predict(one)
            times = []
            for i in range(args.iters):
                x = crops[i : i + 1]
                t0 = time.perf_counter()
                clf.predict(x)
                times.append((time.perf_counter() - t0) * 1000.0)
            precision = getattr(clf.model, "precision", "f32")
            rows.append((backend, precision, tta, acc, statistics.median(times), len(y)))
            print(rows[-1], flush=True)
    ref = {tta: probs[("torch", tta)] for tta in (False, True) if ("torch", tta) in probs}
    lines = [
        "| backend | precision | flip TTA | PrivateTest acc | agrees with torch (argmax) "
        "| max abs prob diff | batch-1 ms/face |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for backend, precision, tta, acc, ms, n in rows:  # noqa: B007 (n is used below)
        p = probs[(backend, tta)]
        agree = diff = float("nan")
        if tta in ref:
            agree = float((p.argmax(1) == ref[tta].argmax(1)).float().mean())
            diff = float((p - ref[tta]).abs().max())
        lines.append(
            f"| {backend} | {precision} | {'on' if tta else 'off'} | {acc:.2%} | {agree:.2%} "
            f"| {diff:.4f} | {ms:.2f} |"
        )
    clf0 = EmotionClassifier(args.checkpoint)
    cmd = ("python bench/backend_parity.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    load = os.getloadavg()[0]
    body = (
        f"{SECTION}\n\nThe {n} PrivateTest faces as the server answers `POST /v1/predict?detect=false`, "
        f"checkpoint {args.checkpoint.name} (stem {clf0.meta.stem}, {clf0.input_size} px), on each "
        f"classifier path; batch-1 time is `EmotionClassifier.predict` for one face (median of {args.iters}, "
        f"threads {args.threads or 'default'}), 1-min load average {load:.1f}.\n\n"
        + "\n".join(lines)
        + f"\n\nReproduce: `{cmd}`\n"
    )
    print(body)
    if not args.no_write:
        write_section(args.out, SECTION, body)


if __name__ == "__main__":
    main()
