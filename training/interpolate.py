"""Weighted averages of checkpoints of one model: WiSE-FT and model soups (Wortsman et al., 2022).

Why: a short fine-tune on real-photo crops fixes the classifier's behaviour on real photos but
costs it on FER2013. A point on the straight line between the weights before and after the
fine-tune (WiSE-FT, ``--alpha``) often keeps most of both gains; averaging several fine-tunes of
one start (a soup, ``--weights``) keeps what each learnt from the crops and recovers part of
FER2013. Neither costs training. Every floating tensor (BatchNorm running statistics included)
is averaged in fp32; integer buffers (BatchNorm's batch counters) come from the last checkpoint.
Candidates are chosen like any other: on PublicTest and the held-out real photos, never on
PrivateTest.

    python -m training.interpolate START END --alpha 0.5 --out runs/wise/a0.5.safetensors
    python -m training.interpolate A B C --weights 0.5,0.25,0.25 --out runs/soup.safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

from server.model.checkpoint import CheckpointError, file_digest, load_checkpoint, save_checkpoint

#: Metadata that must agree for the weight sets to be points of one model.
_SAME = ("arch", "stem", "classes", "input_size", "in_channels", "mean", "std", "crop")


def soup(paths: Sequence[str | Path], weights: Sequence[float], out: str | Path) -> Path:
    """Write ``sum(w_i * checkpoint_i)`` to ``out`` with the last checkpoint's metadata, every
    source, weight and validation score recorded in its ``train_config`` and its metrics dropped (they
    were the last checkpoint's scores, not the average's)."""
    if len(paths) < 2 or len(paths) != len(weights):
        raise ValueError(f"need two or more checkpoints, one weight each: got {len(paths)}, {len(weights)}")
    if min(weights) < 0 or not math.isclose(sum(weights), 1.0, abs_tol=1e-6):
        raise ValueError(f"weights must be >= 0 and sum to 1, got {list(weights)}")
    loaded = [load_checkpoint(p) for p in paths]
    model, last = loaded[-1]
    for path, (_, meta) in zip(paths[:-1], loaded[:-1], strict=True):
        differ = [k for k in _SAME if getattr(meta, k) != getattr(last, k)]
        if differ:
            raise CheckpointError(f"{path} and {paths[-1]} are not one model: {', '.join(differ)} differ")
    states = [m.state_dict() for m, _ in loaded]
    model.load_state_dict(
        {
            k: sum(w * s[k].float() for w, s in zip(weights, states, strict=True)).to(v.dtype)
            if v.is_floating_point()
            else v
            for k, v in states[-1].items()
        }
    )
    meta = last.model_copy(deep=True)
    meta.train_config = {
        "averaged": [
            {
                "checkpoint": f"{Path(p).name} ({file_digest(p)})",
                "weight": w,
                "validation": m.metrics.get("validation"),
                "data_fingerprint": m.data_fingerprint,
            }
            for p, w, (_, m) in zip(paths, weights, loaded, strict=True)
        ],
        "last_train_config": last.train_config,
    }
    meta.metrics = {}  # the last checkpoint's validation and test scores are not the average's
    meta.prior_shift = {}  # nor is its prior shift (measured on its own scores)
    meta.data_fingerprint = soup_fingerprint([m.data_fingerprint for _, m in loaded])
    return save_checkpoint(out, model, meta)


def soup_fingerprint(fingerprints: Sequence[str]) -> str:
    """The ingredients' training data: their fingerprint when they share one, else one made from
    all of them (the last one's alone would say the soup saw only its data)."""
    if len(set(fingerprints)) == 1:
        return fingerprints[0]
    return hashlib.sha256("+".join(sorted(set(fingerprints))).encode()).hexdigest()[:16]


def interpolate(start: str | Path, end: str | Path, alpha: float, out: str | Path) -> Path:
    """``(1 - alpha) * start + alpha * end`` (WiSE-FT), with ``end``'s metadata."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return soup([start, end], [1.0 - alpha, alpha], out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="two or more checkpoints of one model")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--alpha", type=float, help="two checkpoints: 0 = the first, 1 = the second")
    how.add_argument("--weights", help="comma list, one per checkpoint, summing to 1 (default: uniform)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    paths = args.checkpoints
    try:
        if args.alpha is not None:
            if len(paths) != 2:
                raise ValueError(f"--alpha takes two checkpoints, got {len(paths)}")
            print(interpolate(paths[0], paths[1], args.alpha, args.out))
            return
        n = len(paths)
        weights = [float(w) for w in args.weights.split(",")] if args.weights else [1 / n] * n
        print(soup(paths, weights, args.out))
    except (CheckpointError, ValueError) as exc:
        raise SystemExit(str(exc)) from exc


if __name__ == "__main__":
    main()
