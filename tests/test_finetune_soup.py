"""training/finetune_soup.sh, the bundled model's recipe as one command, run end to end on a tiny
synthetic FER2013-layout tree (real emotion-train, training.interpolate and emotion-eval processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from server.model.checkpoint import read_meta
from shared.emotions import EMOTIONS

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "training" / "finetune_soup.sh"


def _tree(root: Path, seed: int, n_train: int) -> Path:
    """``train/<class>/Training_*.jpg`` and ``test/<class>/PublicTest_*.jpg``, classes told apart by
    brightness and a stripe."""
    rng = np.random.default_rng(seed)
    for k, cls in enumerate(EMOTIONS):
        for split, prefix, n in (("train", "Training", n_train), ("test", "PublicTest", 4)):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 30, (48, 48)) + 30 * k
                img[:, k * 6 : k * 6 + 4] = 255
                Image.fromarray(img.astype(np.uint8)).save(d / f"{prefix}_{k}_{i}.jpg")
    return root


@pytest.mark.slow
def test_four_fine_tunes_averaged_and_scored(tiny_checkpoint: Path, tmp_path: Path) -> None:
    fer, crops, out = _tree(tmp_path / "fer", 0, 12), _tree(tmp_path / "crops", 1, 4), tmp_path / "out"
    env = os.environ | {
        "BIN": str(Path(sys.executable).parent),
        "FT_ARGS": "--epochs 1 --limit 48 --batch-size 16 --no-augment --amp off",
    }
    run = subprocess.run(
        ["bash", str(SCRIPT), str(tiny_checkpoint), str(crops), str(out), str(fer)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    names = ["s8k-seed0", "s8k-seed1", "full-r3-seed0", "full-r3-seed1"]
    for name in names:
        assert (out / name / "best.safetensors").is_file()
        assert json.loads((out / name / "log.jsonl").read_text().splitlines()[-1])["epoch"] == 1
    meta = read_meta(out / "soup.safetensors")
    assert meta.stem == "s2"  # the start's stem, read from its metadata
    sources = meta.train_config["averaged"]
    assert [s["checkpoint"].split(" ")[0] for s in sources] == ["best.safetensors"] * 4
    assert [s["weight"] for s in sources] == pytest.approx([0.25] * 4)
    assert len({s["checkpoint"] for s in sources}) == 4  # four different weight files
    metrics = json.loads((out / "eval-public" / "metrics.json").read_text())
    assert metrics["n"] == 4 * len(EMOTIONS)
    # a second call finds every fine-tune done and only averages and scores again
    again = subprocess.run(
        ["bash", str(SCRIPT), str(tiny_checkpoint), str(crops), str(out), str(fer)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0 and "s8k-seed0:" not in again.stdout, again.stdout + again.stderr
