"""Accuracy and cost of the server's classifier paths: torch (reference) vs OpenVINO, flip TTA off/on.

A path is ``BACKEND[:PRECISION]`` (``EMOTION_BACKEND``, ``EMOTION_CPU_PRECISION``): ``openvino`` is the
server's default on the CPU (the checkpoint's int8 build where one sits beside it, else bf16/f32),
``openvino:float`` the same without int8.

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
from bench_server import machine  # bench/ is on sys.path when run as a script
from docsection import write_section

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
    p.add_argument("--backends", default="torch,openvino,openvino:float", help="paths, BACKEND[:PRECISION]")
    p.add_argument("--threads", type=int, default=None, help="torch/OpenVINO threads (default: all)")
    p.add_argument("--iters", type=int, default=60, help="timed batch-1 calls per path")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true")
    return p


def private_test(data: Path) -> tuple[torch.Tensor, np.ndarray]:
    from training.data import load_dataset

    ds = load_dataset(data, size=48).subset("private")
    return torch.from_numpy(ds.images).unsqueeze(1), ds.labels


def server_answers(clf: EmotionClassifier, faces48: torch.Tensor) -> torch.Tensor:
    """(N, C) probabilities for (N, 1, 48, 48) faces as ``POST /v1/predict?detect=false`` gives them:
    the server's whole-image crop to the classifier's size, then ``predict``, in batches (batching
    does not change a face's answer)."""
    crops = torch.cat(
        [crop_whole_images(list(chunk.float()), clf.input_size) for chunk in faces48.split(512)]
    )
    return torch.cat([clf.predict(chunk) for chunk in crops.split(256)])


def batch1_ms(paths: dict[str, EmotionClassifier], iters: int) -> dict[str, float]:
    """Median ``predict`` time for one face per path, the paths alternating call by call."""
    times: dict[str, list[float]] = {k: [] for k in paths}
    gen = torch.Generator().manual_seed(0)
    for i in range(iters + 5):
        for name, clf in paths.items():
            x = torch.randint(0, 256, (1, 1, clf.input_size, clf.input_size), generator=gen).float()
            t0 = time.perf_counter()
            clf.predict(x)
            if i >= 5:
                times[name].append((time.perf_counter() - t0) * 1000.0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    faces48, labels = private_test(args.data)
    backends = args.backends.split(",")
    paths = {
        (b, tta): EmotionClassifier(
            args.checkpoint,
            "cpu",
            backend=b.split(":")[0],
            threads=args.threads,
            precision=b.split(":")[1] if ":" in b else "auto",  # type: ignore[arg-type]
            flip_tta=tta,
        )
        for b in backends
        for tta in (False, True)
    }
    probs: dict[tuple[str, bool], torch.Tensor] = {}
    accs: dict[tuple[str, bool], float] = {}
    for key, clf in paths.items():
        p = server_answers(clf, faces48)
        y = np.array([clf.classes.index(EMOTIONS[i]) for i in labels])
        probs[key], accs[key] = p, float((p.argmax(1).numpy() == y).mean())
        print(key, f"{accs[key]:.4f}", flush=True)
    ms = batch1_ms({f"{b} tta={t}": clf for (b, t), clf in paths.items()}, args.iters)
    ref = {tta: probs[("torch", tta)] for tta in (False, True) if ("torch", tta) in probs}
    clf0 = next(iter(paths.values()))
    lines = [
        "| path | precision | flip TTA | PrivateTest acc | agrees with torch (argmax) "
        "| max abs prob diff | batch-1 ms/face |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for (backend, tta), clf in paths.items():
        p = probs[(backend, tta)]
        agree = diff = float("nan")
        if tta in ref:
            agree = float((p.argmax(1) == ref[tta].argmax(1)).float().mean())
            diff = float((p - ref[tta]).abs().max())
        precision = getattr(clf.model, "precision", "f32")
        lines.append(
            f"| {backend} | {precision} | {'on' if tta else 'off'} | {accs[(backend, tta)]:.2%} "
            f"| {agree:.2%} | {diff:.4f} | {ms[f'{backend} tta={tta}']:.2f} |"
        )
    cmd = ("python bench/backend_parity.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    load = os.getloadavg()[0]
    body = (
        f"{SECTION}\n\nThe {len(labels)} PrivateTest faces as the server answers "
        f"`POST /v1/predict?detect=false`, checkpoint {args.checkpoint.name} (stem {clf0.meta.stem}, "
        f"{clf0.input_size} px), on each classifier path. Batch-1 time is `EmotionClassifier.predict` for "
        f"one face, median of {args.iters}, all paths alternating call by call (threads "
        f"{args.threads or 'default'}, 1-min load average {load:.1f} at the end).\n\n"
        + "\n".join(lines)
        + f"\n\nMachine: {machine()}.\n\nReproduce: `{cmd}`\n"
    )
    print(body)
    if not args.no_write:
        write_section(args.out, SECTION, body)


if __name__ == "__main__":
    main()
