"""training.interpolate: the weights on the line between two checkpoints, refused across models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from server.model.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint, save_checkpoint
from server.model.resnet import build_resnet18
from shared.emotions import EMOTIONS
from training.interpolate import interpolate, main


def _checkpoint(path: Path, seed: int, stem: str = "s2") -> Path:
    torch.manual_seed(seed)
    model = build_resnet18(len(EMOTIONS), 1, stem)
    for m in model.modules():  # non-trivial BatchNorm statistics, which are interpolated too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    meta = CheckpointMeta(classes=list(EMOTIONS), stem=stem, version=str(seed), metrics={"test": {"x": 1}})
    return save_checkpoint(path, model, meta, dtype=torch.float32)


def test_interpolates_every_float_tensor(tmp_path: Path) -> None:
    a, b = _checkpoint(tmp_path / "a.safetensors", 0), _checkpoint(tmp_path / "b.safetensors", 1)
    out = interpolate(a, b, 0.25, tmp_path / "mix.safetensors")
    sa, sb = (load_checkpoint(p)[0].state_dict() for p in (a, b))
    mixed, meta = load_checkpoint(out)
    for k, v in mixed.state_dict().items():
        if v.is_floating_point():
            expected = 0.75 * sa[k] + 0.25 * sb[k]
            torch.testing.assert_close(v, expected, atol=2e-3, rtol=2e-3)  # saved in fp16
        else:
            assert torch.equal(v, sb[k])
    assert not torch.allclose(mixed.state_dict()["bn1.running_mean"], sa["bn1.running_mean"])
    assert meta.version == "1" and "test" not in meta.metrics
    assert meta.train_config["interpolated"]["alpha"] == 0.25
    # the mixed weights still classify: a forward pass gives finite probabilities
    probs = mixed(torch.rand(2, 1, 48, 48)).softmax(-1)
    assert torch.isfinite(probs).all()


def test_refuses_different_models_and_bad_alpha(tmp_path: Path) -> None:
    a = _checkpoint(tmp_path / "a.safetensors", 0)
    c = _checkpoint(tmp_path / "c.safetensors", 2, stem="s1-pool")
    with pytest.raises(CheckpointError, match="stem"):
        interpolate(a, c, 0.5, tmp_path / "x.safetensors")
    with pytest.raises(SystemExit, match="alpha"):
        main([str(a), str(a), "--alpha", "1.5", "--out", str(tmp_path / "y.safetensors")])
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()
