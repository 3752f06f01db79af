"""Quantize an emotion checkpoint's classifier to int8 for OpenVINO on the CPU, written beside it.

Why: on CPUs without native bf16 (most laptops and many cloud VMs: AVX2 only) OpenVINO runs the
classifier in f32, where ResNet18 at batch 1 is a third of a one-face request; int8 runs it about
twice as fast there (docs/benchmarks.md, "int8 classifier (CPU)"). The server reads the build where
it sits beside the checkpoint (``NAME.int8.xml``, :func:`server.model.checkpoint.int8_build`) and
only for the weights it was made from; ``EMOTION_CPU_PRECISION=float`` turns it off.

Calibration: FER2013 *training* faces only (PublicTest and PrivateTest stay unseen), normalised as
the classifier sees them. NNCF's overflow fix (7-bit weights in the first layer, for CPUs without
VNNI) stays off: measured on such a CPU it cost accuracy and gained nothing (model card).

    python -m training.quantize_classifier --data ../shared/data/fer2013.tar.gz   # ~1 min; nncf ([train])
    python -m training.quantize_classifier --data DATA --checkpoint runs/x/best.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from server.model.checkpoint import DEFAULT_CHECKPOINT, int8_build, load_checkpoint, read_meta
from server.pipeline.preprocess import normalize
from training.data import load_dataset
from training.int8 import quantize_to_ir


def calibration_faces(data: str | Path, size: int, n: int, seed: int) -> np.ndarray:
    """``n`` random faces of the training split, (n, size, size) uint8."""
    train = load_dataset(data, size=size).subset("train")
    if not len(train):
        raise SystemExit(f"{data}: no training faces to calibrate on")
    rng = np.random.default_rng(seed)
    return train.images[np.sort(rng.choice(len(train), min(n, len(train)), replace=False))]


def quantize_classifier(
    checkpoint: Path, faces: np.ndarray, out: Path | None = None, data: str = ""
) -> dict[str, object]:
    """Write ``checkpoint``'s int8 IR (default: beside it) and its ``.json``; returns what that holds."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    model, meta = load_checkpoint(checkpoint)
    size = meta.input_size
    example = torch.zeros((1, meta.in_channels, size, size))
    x = normalize(torch.from_numpy(faces)[:, None].float(), meta.mean, meta.std).numpy()
    about = {
        "source": f"{checkpoint.name} ({meta.name} {meta.version})",
        "calibration": f"FER2013 training faces ({data or 'given'}), one per input, normalised",
        "overflow_fix": "disabled",
    }
    return quantize_to_ir(
        model,
        example,
        [x[i : i + 1] for i in range(len(x))],
        out or int8_build(checkpoint),
        about,
        advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.DISABLE),
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="FER2013 in any form emotion-train takes")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--out", type=Path, default=None, help=".xml to write (default: beside the checkpoint)")
    p.add_argument("--n", type=int, default=2000, help="calibration faces")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    faces = calibration_faces(args.data, read_meta(args.checkpoint).input_size, args.n, args.seed)
    out = args.out or int8_build(args.checkpoint)
    made = quantize_classifier(args.checkpoint, faces, out, str(args.data))
    print(json.dumps(made, indent=2), f"-> {out}", sep="\n")


if __name__ == "__main__":
    main()
