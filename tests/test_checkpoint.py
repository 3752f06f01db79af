"""The checkpoint format: round trip, and refusal of corrupted or mismatched files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from server.model.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from server.model.resnet import build_resnet18


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_resnet18(3, 1, "s2").eval()
    with torch.no_grad():  # make BN statistics non-trivial so they must round-trip too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    meta = CheckpointMeta(classes=["happy", "neutral", "surprise"], metrics={"validation": {"val_acc": 0.5}})
    path = save_checkpoint(tmp_path / "m.safetensors", model, meta, dtype=torch.float32)
    loaded, meta2 = load_checkpoint(path)
    assert meta2 == meta
    x = torch.randn(4, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_fp16_checkpoint_is_close(tmp_path: Path) -> None:
    model = build_resnet18(7, 1, "s2").eval()
    meta = CheckpointMeta(classes=["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"])
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "h.safetensors", model, meta))
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).softmax(1), model(x).softmax(1), atol=2e-3, rtol=0)


def test_corrupted_file_is_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    data = bytearray(tiny_checkpoint.read_bytes())
    bad.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_meta(bad)


def test_mismatched_weights_are_refused(tmp_path: Path) -> None:
    model = build_resnet18(3, 1, "s2")
    meta = CheckpointMeta(classes=["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"])
    path = tmp_path / "mismatch.safetensors"
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(path),
        metadata={"emotion_meta": meta.model_dump_json()},
    )
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(path)


def test_foreign_or_invalid_metadata_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not an emotion checkpoint"):
        read_meta(path)
    save_file({"w": torch.zeros(2)}, str(path), metadata={"emotion_meta": json.dumps({"classes": ["joy"]})})
    with pytest.raises(CheckpointError, match="bad class list"):
        read_meta(path)
    with pytest.raises(CheckpointError, match="not found"):
        read_meta(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("stem", ["s1", "s1-pool", "s2"])
def test_resnet18_is_torchvisions(stem: str) -> None:
    """The project's ResNet18 (written out so the server never imports torchvision) is torchvision's:
    the same parameter names, random initialisation for a seed, repr (part of the key an int8 build
    records, server.pipeline.backend.module_key) and outputs for the same weights."""
    from torchvision.models import resnet18
    from torchvision.models.resnet import BasicBlock

    torch.manual_seed(3)
    theirs = resnet18(weights=None, num_classes=7)
    theirs.conv1 = torch.nn.Conv2d(1, 64, 3, stride=2 if stem == "s2" else 1, padding=1, bias=False)
    if stem != "s1-pool":
        theirs.maxpool = torch.nn.Identity()
    for m in theirs.modules():
        if isinstance(m, BasicBlock):
            torch.nn.init.zeros_(m.bn2.weight)
    torch.manual_seed(3)
    ours = build_resnet18(7, 1, stem)
    a, b = theirs.state_dict(), ours.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert repr(theirs) == repr(ours)
    with torch.no_grad():
        for m in ours.modules():  # non-trivial residual branches, so every layer counts
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 1, 48, 48)
    assert torch.equal(theirs.eval()(x), ours.eval()(x))


def test_prior_shift_is_logits_plus_shift_and_round_trips(tmp_path: Path) -> None:
    classes = ["happy", "neutral", "surprise"]
    meta = CheckpointMeta(classes=classes, prior_shift={"happy": 0.5, "surprise": -1.0})
    logits = torch.tensor([[1.0, 0.0, 2.0], [-1.0, 3.0, 0.5]])
    expected = (logits + torch.tensor([0.5, 0.0, -1.0])).softmax(1)  # a class it does not name: 0
    torch.testing.assert_close(meta.shifted(logits.softmax(1)), expected)
    assert CheckpointMeta(classes=classes).shifted(logits) is logits  # none: untouched
    path = save_checkpoint(tmp_path / "m.safetensors", build_resnet18(3, 1, "s2"), meta)
    assert read_meta(path).prior_shift == {"happy": 0.5, "surprise": -1.0}


@pytest.mark.parametrize(
    "shift", [{"joy": 0.1}, {"happy": float("nan")}, {"happy": float("inf")}, {"neutral": -50.0}]
)
def test_a_bad_prior_shift_is_refused(tmp_path: Path, shift: dict[str, float]) -> None:
    meta = CheckpointMeta(classes=["happy", "neutral"], prior_shift=shift)
    with pytest.raises(CheckpointError, match="prior_shift"):
        save_checkpoint(tmp_path / "m.safetensors", build_resnet18(2, 1, "s2"), meta)
