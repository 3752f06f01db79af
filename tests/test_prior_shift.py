"""training.prior_shift: the label-shift correction's numbers, and a real run on tiny trees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_fer import fer_tree

from server.model.checkpoint import load_checkpoint, read_meta
from shared.emotions import EMOTIONS
from training.evaluate import score_split
from training.prior_shift import GRID, choose_alpha, log_ratio, main, shifted


def test_log_ratio_is_labels_over_mean_scores() -> None:
    y = np.array([0, 0, 0, 1])  # frequencies 0.75 / 0.25 / 0
    proba = np.array([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    expected = np.log((np.array([0.75, 0.25, 0.0]) + 1e-3) / (np.array([0.5, 0.3, 0.2]) + 1e-3))
    np.testing.assert_allclose(log_ratio(y, proba), expected)


def test_choose_alpha_takes_the_largest_within_tolerance() -> None:
    # Two faces of class 1 whose scores a shift toward class 0 turns into wrong answers one by one.
    proba = np.array([[0.45, 0.55], [0.40, 0.60], [0.9, 0.1]])
    y = np.array([1, 1, 0])
    ratio = np.array([1.0, -1.0])  # x e^(2 alpha) in favour of class 0
    alpha, acc = choose_alpha(proba, y, ratio, tolerance=40.0, grid=(0.0, 0.05, 0.1, 0.2))
    # 0.45 e^{2a} > 0.55 from a = 0.1003: a = 0.1 keeps all right; 0.2 loses the first (2/3 >= 1 - 0.4)
    assert acc == pytest.approx({0.0: 1.0, 0.05: 1.0, 0.1: 1.0, 0.2: 2 / 3})
    assert alpha == 0.2
    assert choose_alpha(proba, y, ratio, tolerance=0.0, grid=(0.0, 0.05, 0.1, 0.2))[0] == 0.1
    np.testing.assert_allclose(shifted(proba, 0 * ratio), proba)
    assert GRID[0] == 0.0 and GRID[-1] == 1.0


@pytest.mark.slow
def test_a_run_writes_the_shift_it_measured_and_keeps_the_weights(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    fer = fer_tree(tmp_path / "fer", dict.fromkeys(EMOTIONS, 2), n_public=5, n_private=0)
    skewed = {c: (12 if c in ("happy", "neutral") else 1) for c in EMOTIONS}  # a photo source's classes
    crops = fer_tree(tmp_path / "crops", skewed, n_public=2, n_private=0, seed=1)
    out = tmp_path / "shifted.safetensors"
    main(["--crops", str(crops), "--data", str(fer), "--checkpoint", str(tiny_checkpoint), "--out", str(out)])

    meta = read_meta(out)
    record = meta.metrics["prior_shift"]
    faces = score_split(crops, tiny_checkpoint, "train", device="cpu")
    assert faces.y.size == sum(skewed.values())  # the crops' training faces, not their test ones
    expected = record["alpha"] * log_ratio(faces.y, faces.proba)
    assert list(meta.prior_shift) == list(EMOTIONS)
    np.testing.assert_allclose(list(meta.prior_shift.values()), expected, atol=1e-4)
    assert record["label_counts"] == skewed and record["alpha"] in GRID
    public = record["public_accuracy"]
    assert public["chosen"] >= public["alpha_0"] - 0.002
    # the weights are the start's (stored in fp16, as emotion-eval --bundle stores them); the scores
    # the server gives are the shifted ones
    before, after = load_checkpoint(tiny_checkpoint)[0], load_checkpoint(out)[0]
    for (k, a), b in zip(before.state_dict().items(), after.state_dict().values(), strict=True):
        assert torch.equal(a.half().to(a.dtype) if a.is_floating_point() else a, b), k
    raw = score_split(fer, out, "public", device="cpu", prior_shift=False)
    served = score_split(fer, out, "public", device="cpu")
    torch.testing.assert_close(
        torch.from_numpy(served.proba), meta.shifted(torch.from_numpy(raw.proba)), rtol=1e-5, atol=1e-6
    )
