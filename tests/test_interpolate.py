"""training.interpolate: weighted averages of checkpoints (WiSE-FT, soups), refused across models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from server.model.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint, save_checkpoint
from server.model.resnet import build_resnet18
from shared.emotions import EMOTIONS
from training.interpolate import interpolate, main, soup


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
    assert [s["weight"] for s in meta.train_config["averaged"]] == [0.75, 0.25]
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


def test_a_soup_of_three_with_weights_and_uniform(tmp_path: Path) -> None:
    paths = [_checkpoint(tmp_path / f"{i}.safetensors", i) for i in range(3)]
    states = [load_checkpoint(p)[0].state_dict() for p in paths]
    out = soup(paths, [0.5, 0.25, 0.25], tmp_path / "soup.safetensors")
    mixed = load_checkpoint(out)[0].state_dict()
    for k, v in mixed.items():
        if v.is_floating_point():
            expected = 0.5 * states[0][k] + 0.25 * states[1][k] + 0.25 * states[2][k]
            torch.testing.assert_close(v, expected, atol=2e-3, rtol=2e-3)
    # the command line: uniform weights unless given
    main([*map(str, paths), "--out", str(tmp_path / "uniform.safetensors")])
    uniform, meta = load_checkpoint(tmp_path / "uniform.safetensors")
    expected = sum(s["fc.weight"] for s in states) / 3
    torch.testing.assert_close(uniform.state_dict()["fc.weight"], expected, atol=2e-3, rtol=2e-3)
    assert [s["weight"] for s in meta.train_config["averaged"]] == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--weights", "0.5,0.6,-0.1"], "sum to 1"),
        (["--weights", "0.5,0.5"], "one weight each"),
        (["--alpha", "0.5"], "two checkpoints"),
    ],
)
def test_a_soup_refuses_bad_weights(tmp_path: Path, args: list[str], message: str) -> None:
    paths = [str(_checkpoint(tmp_path / f"{i}.safetensors", i)) for i in range(3)]
    with pytest.raises(SystemExit, match=message):
        main([*paths, *args, "--out", str(tmp_path / "x.safetensors")])
    assert not (tmp_path / "x.safetensors").exists()


def test_a_soup_does_not_claim_its_last_ingredients_validation_score(tmp_path: Path) -> None:
    """Metrics in a checkpoint (reported by /v1/info) are its own: a soup has none until it is scored."""
    paths = [_checkpoint(tmp_path / f"{i}.safetensors", i) for i in range(2)]
    for i, p in enumerate(paths):  # each ingredient with its own validation score
        model, meta = load_checkpoint(p)
        meta.metrics["validation"] = {"val_acc": 0.5 + i / 10, "epoch": i + 1}
        meta.prior_shift = {meta.classes[0]: -0.5 - i}  # measured on its own scores (training.prior_shift)
        save_checkpoint(p, model, meta, dtype=torch.float32)
    _, meta = load_checkpoint(interpolate(*paths, 0.5, tmp_path / "mix.safetensors"))
    assert "validation" not in meta.metrics and "test" not in meta.metrics and not meta.prior_shift
    assert [s["validation"]["val_acc"] for s in meta.train_config["averaged"]] == [0.5, 0.6]


def test_a_soup_of_differently_trained_ingredients_has_its_own_data_fingerprint(tmp_path: Path) -> None:
    paths = [_checkpoint(tmp_path / f"{i}.safetensors", i) for i in range(3)]
    for p, fingerprint in zip(paths, ["aaaa", "bbbb", "aaaa"], strict=True):
        model, meta = load_checkpoint(p)
        meta.data_fingerprint = fingerprint
        save_checkpoint(p, model, meta, dtype=torch.float32)
    _, mixed = load_checkpoint(soup(paths, [0.25, 0.25, 0.5], tmp_path / "mix.safetensors"))
    assert mixed.data_fingerprint not in {"aaaa", "bbbb", ""}  # not the last ingredient's alone
    assert [s["data_fingerprint"] for s in mixed.train_config["averaged"]] == ["aaaa", "bbbb", "aaaa"]
    _, same = load_checkpoint(soup(paths[::2], [0.5, 0.5], tmp_path / "same.safetensors"))
    assert same.data_fingerprint == "aaaa"  # one training set: its fingerprint
