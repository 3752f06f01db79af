"""One-epoch smoke training on CPU, resume, the 3-class mode, and emotion-eval's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_fer import fer_tree

from server.model.checkpoint import load_checkpoint
from training import evaluate, train


@pytest.fixture(scope="module")
def tiny_fer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fer_tree(
        tmp_path_factory.mktemp("fer"), {"happy": 40, "neutral": 40, "surprise": 40, "contempt": 5}
    )


def test_one_epoch_then_resume(tiny_fer: Path, tmp_path: Path) -> None:
    args = [
        "--data",
        str(tiny_fer),
        "--out",
        str(tmp_path),
        "--batch-size",
        "16",
        "--ema",
        "0.9",
        "--classes",
        "happy,neutral,surprise",
        "--mixup",
        "0.2",
        "--cutmix",
        "1.0",
        "--train-sizes",
        "32,48",
        "--epochs",
        "2",
    ]
    first = train.run(train.get_args_parser().parse_args([*args, "--stop-after", "1"]))
    # epoch 1 trains at 32 px: not selectable for a 48 px checkpoint
    assert first["best"]["val_acc"] < 0 and not (tmp_path / "best.safetensors").exists()
    assert (tmp_path / "last.pt").exists()
    # resume continues at epoch 2 of 2 instead of starting over
    second = train.run(train.get_args_parser().parse_args([*args, "--resume"]))
    assert second["best"]["epoch"] == 2
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert [r["size"] for r in log] == [32, 48]
    _, meta = load_checkpoint(tmp_path / "best.safetensors")
    assert meta.classes == ["happy", "neutral", "surprise"] and meta.data_fingerprint
    assert meta.train_config["classes"] == "happy,neutral,surprise" and meta.input_size == 48
    assert (tmp_path / "curves.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))],
)
def test_resumed_run_continues_the_same_random_streams(tiny_fer: Path, tmp_path: Path, device: str) -> None:
    """Two epochs in one go and one epoch + ``--resume`` end in the same state: the data order's
    and the augmentation's random generators go on where they stopped (on CUDA the augmentation
    draws from the device's generator), and on the CPU the weights are the same to the bit."""
    args = ["--data", str(tiny_fer), "--batch-size", "16", "--classes", "happy,neutral,surprise",
            "--epochs", "2", "--device", device, "--ema", "0.9"]  # fmt: skip
    train.run(train.get_args_parser().parse_args([*args, "--out", str(tmp_path / "straight")]))
    split = [*args, "--out", str(tmp_path / "split")]
    train.run(train.get_args_parser().parse_args([*split, "--stop-after", "1"]))
    train.run(train.get_args_parser().parse_args([*split, "--resume"]))
    a, b = (torch.load(tmp_path / d / "last.pt", weights_only=True) for d in ("straight", "split"))
    assert a["epoch"] == b["epoch"] == 1
    for key in ("generator", "torch_rng", "cuda_rng"):
        assert (a[key] is None and b[key] is None) or torch.equal(a[key], b[key]), key
    if device == "cpu":
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_eval_writes_metrics_report_and_skips_unknown(tiny_fer: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train.main(
        [
            "--data",
            str(tiny_fer),
            "--out",
            str(out),
            "--batch-size",
            "16",
            "--epochs",
            "3",
            "--classes",
            "happy,neutral",
            "--lr",
            "0.05",
        ]
    )
    eval_dir = tmp_path / "eval"
    evaluate.main(
        [
            "--data",
            str(tiny_fer),
            "--checkpoint",
            str(out / "best.safetensors"),
            "--out",
            str(eval_dir),
            "--split",
            "private",
            "--tta",
            "flip",
            "--bundle",
            str(tmp_path / "bundled.safetensors"),
            "--crop-margin",
            "0.1",
        ]
    )
    m = json.loads((eval_dir / "metrics.json").read_text())
    assert m["split"] == "private" and m["tta"] == "flip"
    assert m["n"] == 12  # 6 happy + 6 neutral PrivateTest images; surprise/contempt are not model classes
    assert m["skipped"] == {"contempt": 6, "surprise": 6}
    assert set(m["per_class"]) == {"happy", "neutral"}
    assert np.asarray(m["confusion_matrix"]).sum() == 12
    assert (eval_dir / "confusion.png").stat().st_size > 1000
    assert "accuracy" in (eval_dir / "report.md").read_text()
    _, meta = load_checkpoint(tmp_path / "bundled.safetensors")
    assert meta.metrics["test"]["accuracy"] == m["accuracy"] and meta.metrics["test"]["split"] == "private"
    assert set(meta.metrics["test"]["recall"]) == {"happy", "neutral"}
    assert meta.crop.margin == 0.1 and meta.crop.y_shift == 0.0
    assert "epoch" in meta.metrics["validation"]  # emotion-train's best epoch, carried by the copy

    # A PublicTest score is recorded as the validation block (a soup's own), the test block kept.
    evaluate.main(["--data", str(tiny_fer), "--checkpoint", str(tmp_path / "bundled.safetensors"),
                   "--out", str(eval_dir), "--split", "public", "--tta", "none",
                   "--bundle", str(tmp_path / "rebundled.safetensors")])  # fmt: skip
    public = json.loads((eval_dir / "metrics.json").read_text())
    _, meta = load_checkpoint(tmp_path / "rebundled.safetensors")
    assert meta.metrics["validation"]["split"] == "public" and meta.metrics["validation"]["val_tta"] == "none"
    assert meta.metrics["validation"]["val_acc"] == public["accuracy"]
    assert "epoch" not in meta.metrics["validation"]  # nothing left of the training run's block
    assert meta.metrics["test"]["split"] == "private" and meta.metrics["test"]["accuracy"] == m["accuracy"]


def test_resume_refuses_a_changed_recipe(tiny_fer: Path, tmp_path: Path) -> None:
    """The one-cycle schedule is fixed at start: resuming with other epochs must stop, not drift."""
    args = ["--data", str(tiny_fer), "--out", str(tmp_path), "--batch-size", "16", "--epochs", "2"]
    args += ["--classes", "happy,neutral", "--ema", "0"]
    train.run(train.get_args_parser().parse_args([*args, "--stop-after", "1"]))
    with pytest.raises(SystemExit, match="epochs"):
        train.run(train.get_args_parser().parse_args([*args, "--epochs", "3", "--resume"]))
    # where it runs may change (device, bf16 autocast), what it trains may not
    train.run(train.get_args_parser().parse_args([*args, "--resume", "--amp", "off"]))
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]


def test_bf16_autocast_on_cpu_trains(tiny_fer: Path, tmp_path: Path) -> None:
    """--amp bf16 trains the CPU step under bf16 autocast (native on AVX-512 BF16 / AMX) and still learns."""
    argv = ["--data", str(tiny_fer), "--out", str(tmp_path), "--batch-size", "16", "--epochs", "4"]
    argv += ["--classes", "happy,neutral,surprise", "--amp", "bf16", "--device", "cpu", "--lr", "0.05"]
    args = train.get_args_parser().parse_args(argv)
    summary = train.run(args)
    assert args.amp_enabled
    assert summary["best"]["val_acc"] > 0.5  # 3 separable classes: chance is 1/3
    assert train.amp_enabled("off", torch.device("cpu")) is False
    assert train.amp_enabled("auto", torch.device("cpu")) is bool(torch.cpu._is_avx512_bf16_supported())


def test_init_from_keeps_the_start_network(tiny_fer: Path, tmp_path: Path) -> None:
    """--init-from without --stem/--input-size fine-tunes the start's network (its metadata), resumes
    with the same recipe, and a start that is no checkpoint is a one-line error."""
    base = ["--data", str(tiny_fer), "--batch-size", "16", "--classes", "happy,neutral", "--ema", "0"]
    start = tmp_path / "start"
    first = [*base, "--out", str(start), "--epochs", "1", "--stem", "s1-pool", "--input-size", "40"]
    train.run(train.get_args_parser().parse_args(first))
    tune = [*base, "--out", str(tmp_path / "tune"), "--epochs", "2"]
    tune += ["--init-from", str(start / "best.safetensors")]
    train.run(train.get_args_parser().parse_args([*tune, "--stop-after", "1"]))
    train.run(train.get_args_parser().parse_args([*tune, "--resume"]))
    _, meta = load_checkpoint(tmp_path / "tune" / "best.safetensors")
    assert (meta.stem, meta.input_size) == ("s1-pool", 40)
    assert (meta.train_config["stem"], meta.train_config["input_size"]) == ("s1-pool", 40)
    # from scratch the defaults hold
    scratch = train.get_args_parser().parse_args([*base, "--out", str(tmp_path / "s")])
    train.resolve_network(scratch)
    assert (scratch.stem, scratch.input_size) == (train.DEFAULT_STEM, train.DEFAULT_INPUT_SIZE)
    with pytest.raises(SystemExit, match=r"--init-from: checkpoint .* not found"):
        train.run(train.get_args_parser().parse_args([*tune, "--init-from", str(tmp_path / "none")]))
    # a start whose weights expect other input values is refused, not fine-tuned on 0.5/0.25 inputs
    from server.model.checkpoint import save_checkpoint

    model, other = load_checkpoint(start / "best.safetensors")
    other.mean, other.std = 0.507, 0.255
    save_checkpoint(tmp_path / "other.safetensors", model, other)
    with pytest.raises(SystemExit, match=r"mean/std 0.507/0.255"):
        train.run(
            train.get_args_parser().parse_args([*tune, "--init-from", str(tmp_path / "other.safetensors")])
        )


def test_init_from_keeps_the_start_crop_framing(tiny_fer: Path, tmp_path: Path) -> None:
    """A fine-tune's checkpoint keeps its start's measured crop framing: the server crops detected faces
    with it, the photo crops it trains on were made with it, and WiSE-FT between the two needs it equal."""
    from server.model.checkpoint import CheckpointMeta, CropSpec, save_checkpoint
    from server.model.resnet import build_resnet18
    from training.interpolate import interpolate

    classes = ["happy", "neutral"]
    crop = CropSpec(margin=0.1, y_shift=0.05)
    start = save_checkpoint(
        tmp_path / "start.safetensors",
        build_resnet18(2, 1, "s2"),
        CheckpointMeta(classes=classes, stem="s2", crop=crop),
    )
    args = ["--data", str(tiny_fer), "--batch-size", "16", "--classes", ",".join(classes), "--ema", "0"]
    args += ["--out", str(tmp_path / "tune"), "--epochs", "1", "--init-from", str(start)]
    train.run(train.get_args_parser().parse_args(args))
    tuned = tmp_path / "tune" / "best.safetensors"
    assert load_checkpoint(tuned)[1].crop == crop
    interpolate(start, tuned, 0.5, tmp_path / "wise.safetensors")  # one model: not refused
