"""Shift a checkpoint's scores toward the class frequencies of the photos it is used on (label shift).

FER2013's classes come in other proportions than in photos of people (realfaces-dev: 47% neutral,
45% happy, 0.2% fear; FER2013's training set: 25% happy, 17% neutral, 14% fear), and a classifier
trained mostly on FER2013 keeps its proportions: on held-out real photos the bundled model called
16 faces "fear", one rightly (docs/model-card.md, "What a score means"). The correction for a change
of class priors (Saerens, Latinne & Decaestecker 2002) multiplies each score by pi_new / pi_old and
renormalises. Here pi_new are the labels of in-domain training faces (``training.photo_crops``'
crops of the people the fine-tunes trained on, never the held-out ones) and pi_old the model's mean
scores on those faces. The shift is damped, (pi_new / pi_old) ** alpha, alpha being the largest of a
grid whose FER2013 PublicTest accuracy stays within ``--tolerance`` points of the unshifted model's
(PublicTest is the validation split; PrivateTest and the held-out photos are not looked at).

Writes the checkpoint with its ``prior_shift`` (log multipliers, applied by the server unless
``EMOTION_PRIOR_SHIFT=false``) and a record in ``metrics["prior_shift"]``; the weights, and so an
int8 build beside them, are unchanged. Afterwards re-measure the header's validation and test blocks
(``emotion-eval --bundle``, docs/model-card.md "Recipe").

    python -m training.prior_shift --crops runs/rc3/crops --data ../shared/data/fer2013.tar.gz \\
        --checkpoint IN.safetensors --out OUT.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from server.model.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, save_checkpoint, shift_scores
from training.evaluate import score_split

#: alphas tried, from none to the full correction.
GRID = tuple(round(a, 2) for a in np.arange(0.0, 1.0001, 0.05))
#: a class absent from the in-domain labels gets this frequency rather than a log of zero.
EPS = 1e-3


def log_ratio(y: np.ndarray, proba: np.ndarray, eps: float = EPS) -> np.ndarray:
    """log(pi_new / pi_old) per class: the labels' frequencies over the model's mean scores."""
    pi_new = np.bincount(y, minlength=proba.shape[1]) / len(y)
    pi_old = proba.mean(0)
    return np.log((pi_new + eps) / (pi_old + eps))


def shifted(proba: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """:func:`~server.model.checkpoint.shift_scores` on numpy arrays."""
    return shift_scores(torch.from_numpy(proba), torch.from_numpy(np.asarray(shift))).numpy()


def choose_alpha(
    proba: np.ndarray, y: np.ndarray, ratio: np.ndarray, tolerance: float, grid: tuple[float, ...] = GRID
) -> tuple[float, dict[float, float]]:
    """The largest alpha of ``grid`` whose accuracy on (``proba``, ``y``) is within ``tolerance``
    points of alpha = 0's, and the accuracy at each alpha."""
    acc = {a: float((shifted(proba, a * ratio).argmax(1) == y).mean()) for a in grid}
    ok = [a for a in grid if acc[a] >= acc[0.0] - tolerance / 100]
    return max(ok), acc


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--crops", type=Path, required=True, help="training.photo_crops' crops folder")
    p.add_argument("--data", type=Path, required=True, help="FER2013 (its PublicTest chooses alpha)")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--tolerance", type=float, default=0.2, help="PublicTest points alpha may cost (default 0.2)"
    )
    p.add_argument("--device", default="cpu")
    return p


def prior_shift(
    crops: Path, data: Path, checkpoint: Path, tolerance: float, device: str = "cpu"
) -> tuple[dict[str, float], dict[str, Any]]:
    """The prior shift for ``checkpoint`` (class -> log multiplier) and the record of how it was made."""
    faces = score_split(crops, checkpoint, "train", device=device, prior_shift=False)
    public = score_split(data, checkpoint, "public", device=device, prior_shift=False)
    ratio = log_ratio(faces.y, faces.proba)
    alpha, acc = choose_alpha(public.proba, public.y, ratio, tolerance)
    shift = {c: round(float(alpha * r), 4) for c, r in zip(faces.classes, ratio, strict=True)}
    counts = np.bincount(faces.y, minlength=len(faces.classes))
    record = {
        "alpha": alpha,
        "tolerance_points": tolerance,
        "public_accuracy": {"alpha_0": acc[0.0], "chosen": acc[alpha]},
        "public_fingerprint": public.data_fingerprint,
        "faces": {"n": len(faces.y), "fingerprint": faces.data_fingerprint},
        "label_counts": dict(zip(faces.classes, counts.tolist(), strict=True)),
        "mean_scores": {
            c: round(float(v), 4) for c, v in zip(faces.classes, faces.proba.mean(0), strict=True)
        },
    }
    return shift, record


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    shift, record = prior_shift(args.crops, args.data, args.checkpoint, args.tolerance, args.device)
    model, meta = load_checkpoint(args.checkpoint)
    meta.prior_shift = shift
    meta.metrics["prior_shift"] = record
    save_checkpoint(args.out, model, meta)
    acc = record["public_accuracy"]
    print(
        f"alpha={record['alpha']} PublicTest {acc['alpha_0']:.4f} -> {acc['chosen']:.4f}; "
        f"shift {shift} -> {args.out}"
    )


if __name__ == "__main__":
    main()
