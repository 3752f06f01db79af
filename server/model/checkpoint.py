"""Self-describing, pickle-free checkpoints: safetensors weights + JSON metadata in its header.

The metadata says everything a consumer needs to rebuild the model and feed it
(class order, input size, stem, normalisation, crop framing), so the server never
hard-codes any of it, and loading never executes code from the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from server.model.resnet import STEMS, build_resnet18
from shared.emotions import EMOTIONS

FORMAT = "emotion-checkpoint/1"
META_KEY = "emotion_meta"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "emotion-resnet18.safetensors"


class CheckpointError(ValueError):
    """The file is not a usable emotion checkpoint; the message says why."""


class CropSpec(BaseModel):
    """How a detector box becomes a classifier input (the framing FER2013 faces have).

    The default is measured, not guessed: the res10 SSD box around a pasted FER2013 face is as
    tall as the FER2013 square (median 1.01) and centred on it, and margin 0 gives the best
    accuracy of margins 0-0.3 (bench/framing.py, docs/detection.md).
    """

    model_config = ConfigDict(extra="forbid")
    margin: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Fraction of the square side added on each side."
    )
    square: bool = True
    y_shift: float = Field(
        default=0.0, ge=-0.5, le=0.5, description="Shift of the crop centre, fraction of side."
    )


class CheckpointMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str = FORMAT
    name: str = "emotion-resnet18"
    version: str = "0"
    arch: str = "resnet18"
    stem: str = "s2"
    classes: list[str]
    input_size: int = Field(default=48, ge=8, le=512)
    in_channels: int = 1
    mean: float = 0.5
    std: float = 0.25
    crop: CropSpec = Field(default_factory=CropSpec)
    train_config: dict[str, Any] = Field(default_factory=dict)
    data_fingerprint: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict)
    prior_shift: dict[str, float] = Field(
        default_factory=dict,
        description="Per-class log multipliers for the scores where the model is used (label shift: "
        "scores x exp(shift), renormalised; python -m training.prior_shift). Empty: the model's own.",
    )

    def check(self) -> None:
        if self.format != FORMAT:
            raise CheckpointError(f"unsupported checkpoint format {self.format!r} (expected {FORMAT!r})")
        if self.arch != "resnet18" or self.stem not in STEMS:
            raise CheckpointError(f"unsupported architecture {self.arch}/{self.stem}")
        unknown = [c for c in self.classes if c not in EMOTIONS]
        if unknown or not self.classes or len(set(self.classes)) != len(self.classes):
            raise CheckpointError(f"bad class list {self.classes}: must be distinct names from {EMOTIONS}")
        shift = self.prior_shift
        if set(shift) - set(self.classes) or not all(abs(v) <= 20 for v in shift.values()):  # NaN fails too
            raise CheckpointError(f"bad prior_shift {shift}: finite log multipliers of the model's classes")

    def shifted(self, proba: torch.Tensor) -> torch.Tensor:
        """(N, C) scores in ``classes`` order with the prior shift applied (the same without one).

        The correction for a change of class frequencies (Saerens et al. 2002): each score times its
        class's multiplier, renormalised, i.e. the logits plus the shift before the softmax.
        """
        if not self.prior_shift:
            return proba
        return shift_scores(proba, self.shift_vector().to(proba.device, proba.dtype))

    def shift_vector(self) -> torch.Tensor:
        """The prior shift in ``classes`` order, 0 for a class it does not name (all 0 without one)."""
        return torch.tensor([self.prior_shift.get(c, 0.0) for c in self.classes])


def shift_scores(proba: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(N, C) scores times ``exp(shift)`` per class, renormalised: the logits plus ``shift``."""
    p = proba * shift.exp()
    return p / p.sum(1, keepdim=True)


def build_model(meta: CheckpointMeta) -> nn.Module:
    return build_resnet18(len(meta.classes), meta.in_channels, meta.stem)


def save_checkpoint(
    path: str | Path, model: nn.Module, meta: CheckpointMeta, dtype: torch.dtype = torch.float16
) -> Path:
    """Write weights (cast to ``dtype``; fp16 halves the file with no measurable accuracy change)."""
    meta.check()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
        for k, v in model.state_dict().items()
    }
    save_file(state, str(path), metadata={META_KEY: meta.model_dump_json()})
    return path


def read_meta(path: str | Path) -> CheckpointMeta:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    if raw is None:
        raise CheckpointError(f"{path} has no {META_KEY!r} metadata: not an emotion checkpoint")
    try:
        meta = CheckpointMeta.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise CheckpointError(f"{path}: invalid metadata: {exc}") from exc
    meta.check()
    return meta


def load_checkpoint(
    path: str | Path = DEFAULT_CHECKPOINT, device: str | torch.device = "cpu"
) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model from its metadata and load the weights (fp32, eval mode)."""
    path = Path(path)
    meta = read_meta(path)
    model = build_model(meta)
    try:
        with safe_open(str(path), framework="pt") as f:
            state: Mapping[str, torch.Tensor] = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupted tensor data: {exc}") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or bad_shape:
        raise CheckpointError(
            f"{path}: weights do not match the metadata's model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {bad_shape[:3]})"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model.to(device).eval(), meta


def int8_build(checkpoint: str | Path) -> Path:
    """Where a checkpoint's int8 OpenVINO build sits, if it has one: beside it, ``NAME.int8.xml``
    (made by ``python -m training.quantize_classifier``; the server reads it only for these weights)."""
    return Path(checkpoint).with_suffix(".int8.xml")


def file_digest(path: str | Path) -> str:
    """Short content hash, used as the model version the API reports."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
