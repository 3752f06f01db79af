"""Weight interpolation of two checkpoints of one model (WiSE-FT: Wortsman et al., CVPR 2022).

Why: a short fine-tune on real-photo crops fixes the classifier's behaviour on real photos but
costs it on FER2013; a point on the straight line between the weights before and after the
fine-tune often keeps most of both gains, at no training cost. Every floating tensor
(BatchNorm running statistics included) is ``(1 - alpha) * start + alpha * end``; integer
buffers (BatchNorm's batch counters) come from ``end``. Candidates are chosen like any other:
on PublicTest and the held-out real photos, never on PrivateTest.

    python -m training.interpolate START END --alpha 0.5 --out runs/wise/a0.5.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from server.model.checkpoint import CheckpointError, file_digest, load_checkpoint, save_checkpoint

#: Metadata that must agree for the two weight sets to be points of one model.
_SAME = ("arch", "stem", "classes", "input_size", "in_channels", "mean", "std", "crop")


def interpolate(start: str | Path, end: str | Path, alpha: float, out: str | Path) -> Path:
    """Write ``(1 - alpha) * start + alpha * end`` to ``out`` with ``end``'s metadata, the two
    sources and ``alpha`` recorded in its ``train_config`` and its test metrics dropped."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    model_a, meta_a = load_checkpoint(start)
    model_b, meta_b = load_checkpoint(end)
    differ = [k for k in _SAME if getattr(meta_a, k) != getattr(meta_b, k)]
    if differ:
        raise CheckpointError(f"{start} and {end} are not the same model: {', '.join(differ)} differ")
    state_a = model_a.state_dict()
    mixed = {
        k: torch.lerp(state_a[k], v, alpha) if v.is_floating_point() else v
        for k, v in model_b.state_dict().items()
    }
    model_b.load_state_dict(mixed)
    meta = meta_b.model_copy(deep=True)
    meta.train_config = {
        "interpolated": {
            "start": f"{Path(start).name} ({file_digest(start)})",
            "end": f"{Path(end).name} ({file_digest(end)})",
            "alpha": alpha,
        },
        "end_train_config": meta_b.train_config,
    }
    meta.metrics = {k: v for k, v in meta.metrics.items() if k != "test"}
    return save_checkpoint(out, model_b, meta)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("start", help="weights before the fine-tune (alpha 0)")
    parser.add_argument("end", help="weights after it (alpha 1)")
    parser.add_argument("--alpha", type=float, required=True, help="0 = start, 1 = end")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        print(interpolate(args.start, args.end, args.alpha, args.out))
    except (CheckpointError, ValueError) as exc:
        raise SystemExit(str(exc)) from exc


if __name__ == "__main__":
    main()
