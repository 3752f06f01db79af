"""training/finetune_soup.sh, the bundled model's recipe as one command, run end to end on a tiny
synthetic FER2013-layout tree (real emotion-train, training.interpolate and emotion-eval processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from synthetic_fer import fer_tree

from server.model.checkpoint import CheckpointMeta, read_meta, save_checkpoint
from server.model.resnet import build_resnet18
from shared.emotions import EMOTIONS

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "training" / "finetune_soup.sh"


def start_checkpoint(path: Path) -> Path:
    """A random 7-class checkpoint with a network other than emotion-train's defaults (s1-pool @ 40),
    so keeping the start's network is seen."""
    torch.manual_seed(0)
    meta = CheckpointMeta(classes=list(EMOTIONS), stem="s1-pool", input_size=40, version="test")
    save_checkpoint(path, build_resnet18(len(EMOTIONS), 1, "s1-pool"), meta, dtype=torch.float32)
    return path


@pytest.mark.slow
def test_four_fine_tunes_averaged_and_scored(tmp_path: Path) -> None:
    def tree(root: Path, seed: int, n_train: int) -> Path:
        counts = dict.fromkeys(EMOTIONS, n_train)
        return fer_tree(root, counts, n_public=4, n_private=0, seed=seed, step=30, stripe=6)

    start = start_checkpoint(tmp_path / "start.safetensors")
    fer, crops, out = tree(tmp_path / "fer", 0, 12), tree(tmp_path / "crops", 1, 4), tmp_path / "out"
    env = os.environ | {
        "BIN": str(Path(sys.executable).parent),
        "FT_ARGS": "--epochs 1 --limit 48 --batch-size 16 --no-augment --amp off",
    }

    def script() -> subprocess.CompletedProcess[str]:
        args = [str(start), str(crops), str(out), str(fer)]
        return subprocess.run(
            ["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
        )

    run = script()
    assert run.returncode == 0, run.stdout + run.stderr
    names = ["s8k-seed0", "s8k-seed1", "full-r3-seed0", "full-r3-seed1"]
    for name in names:
        assert (out / name / "best.safetensors").is_file()
        assert json.loads((out / name / "log.jsonl").read_text().splitlines()[-1])["epoch"] == 1
    meta = read_meta(out / "soup.safetensors")
    assert (out / "soup.int8.xml").is_file() and (out / "soup.int8.bin").is_file()  # the CPU's build
    assert (meta.stem, meta.input_size) == ("s1-pool", 40)  # the start's network, from its metadata
    sources = meta.train_config["averaged"]
    assert [s["checkpoint"].split(" ")[0] for s in sources] == ["best.safetensors"] * 4
    assert [s["weight"] for s in sources] == pytest.approx([0.25] * 4)
    assert len({s["checkpoint"] for s in sources}) == 4  # four different weight files
    metrics = json.loads((out / "eval-public" / "metrics.json").read_text())
    assert metrics["n"] == 4 * len(EMOTIONS)
    assert read_meta(out / "soup.safetensors").metrics["validation"]["val_acc"] == metrics["accuracy"]
    assert list(meta.prior_shift) == list(EMOTIONS) and meta.metrics["prior_shift"]["faces"]["n"] == 28
    # a second call finds every fine-tune done and only averages and scores again
    again = script()
    assert again.returncode == 0 and "s8k-seed0:" not in again.stdout, again.stdout + again.stderr


@pytest.mark.slow
def test_a_start_that_is_no_checkpoint_stops_with_its_reason(tmp_path: Path) -> None:
    """A missing INIT is refused at once; one that is not a checkpoint stops the first fine-tune, and
    the script says so with the end of its log instead of failing silently."""
    fer = fer_tree(tmp_path / "fer", dict.fromkeys(EMOTIONS, 2), n_public=1, n_private=0)
    env = os.environ | {"BIN": str(Path(sys.executable).parent)}

    def script(init: Path) -> subprocess.CompletedProcess[str]:
        args = [str(init), str(fer), str(tmp_path / "out"), str(fer)]
        return subprocess.run(
            ["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
        )

    missing = script(tmp_path / "none.safetensors")
    assert missing.returncode == 1 and "INIT: checkpoint" in missing.stderr and "not found" in missing.stderr
    (tmp_path / "notes.txt").write_text("not weights")
    bad = script(tmp_path / "notes.txt")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "s8k-seed0 failed" in bad.stderr and "--init-from:" in bad.stderr
    assert "Traceback" not in bad.stderr
