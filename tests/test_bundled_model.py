"""The bundled checkpoint reproduces the PrivateTest number its model card states (needs FER2013),
and answers real photos of people its training never saw far better than always saying "neutral"
(needs realfaces-dev)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.model.checkpoint import DEFAULT_CHECKPOINT, read_meta
from training.evaluate import evaluate_checkpoint
from training.evaluate_photos import evaluate_photos
from training.photo_crops import link_heldout

CARD = Path(__file__).resolve().parent.parent / "docs" / "model-card.md"


def _card_number() -> tuple[float, str]:
    """The card's machine-readable line: ``PrivateTest accuracy: 12.34% (TTA: flip)``."""
    m = re.search(r"PrivateTest accuracy: ([0-9.]+)% \(TTA: (\w+)\)", CARD.read_text())
    assert m, "docs/model-card.md must state 'PrivateTest accuracy: NN.NN% (TTA: none|flip)'"
    return float(m.group(1)), m.group(2)


def test_bundled_metadata_matches_card() -> None:
    accuracy, tta = _card_number()
    test = read_meta(DEFAULT_CHECKPOINT).metrics["test"]
    assert test["split"] == "private" and test["tta"] == tta
    assert test["accuracy"] * 100 == pytest.approx(accuracy, abs=0.01)


@pytest.mark.slow
@pytest.mark.dataset
def test_bundled_checkpoint_reproduces_card_on_private_test(fer2013_path: Path) -> None:
    accuracy, tta = _card_number()
    m = evaluate_checkpoint(fer2013_path, DEFAULT_CHECKPOINT, split="private", tta=tta, device="cpu")
    assert m["n"] == 3589
    assert m["accuracy"] * 100 == pytest.approx(accuracy, abs=0.5)


@pytest.mark.slow
@pytest.mark.dataset
def test_bundled_validation_block_is_the_bundled_weights_own(fer2013_path: Path) -> None:
    """/v1/info shows it: it must be this file's PublicTest score, not a soup ingredient's."""
    validation = read_meta(DEFAULT_CHECKPOINT).metrics["validation"]
    assert validation["split"] == "public"
    m = evaluate_checkpoint(
        fer2013_path, DEFAULT_CHECKPOINT, split="public", tta=validation["tta"], device="cpu"
    )
    assert m["accuracy"] == pytest.approx(validation["val_acc"], abs=0.005)


@pytest.mark.slow
@pytest.mark.dataset
def test_bundled_prior_shift_cost_what_its_record_says_on_public_test(fer2013_path: Path) -> None:
    """training.prior_shift chose its alpha on PublicTest: the record's two accuracies reproduce."""
    from training.evaluate import score_split

    meta = read_meta(DEFAULT_CHECKPOINT)
    record = meta.metrics["prior_shift"]
    assert meta.prior_shift and 0 < record["alpha"] <= 1
    raw = score_split(fer2013_path, DEFAULT_CHECKPOINT, "public", device="cpu", prior_shift=False)
    served = score_split(fer2013_path, DEFAULT_CHECKPOINT, "public", device="cpu")
    # within 3 of 3,589 faces: another CPU's kernels may tip a near-tie
    accuracy = {"alpha_0": raw, "chosen": served}
    for key, scores in accuracy.items():
        assert float((scores.proba.argmax(1) == scores.y).mean()) == pytest.approx(
            record["public_accuracy"][key], abs=1e-3
        )
    assert record["public_accuracy"]["chosen"] >= record["public_accuracy"]["alpha_0"] - 0.002


@pytest.mark.slow
@pytest.mark.dataset
def test_bundled_checkpoint_on_real_photos_of_held_out_people(realfaces_path: Path, tmp_path: Path) -> None:
    """The whole pipeline (decode, detect, crop, classify), as the server answers, on 200 photos of
    people whose crops were never trained on (``training.photo_crops``' split). The card states
    84.47% on all 1,230 of them (default detector); always answering "neutral" scores the neutral
    share (~47%)."""
    link_heldout(realfaces_path, tmp_path)  # what `python -m training.photo_crops --heldout-only` writes
    m = evaluate_photos(tmp_path / "heldout", DEFAULT_CHECKPOINT, limit=200, seed=0, progress=False)
    neutral_share = m["per_class_photos"]["neutral"]["support"] / m["n_photos"]
    assert m["n_photos"] == 200
    assert m["accuracy_photos"] >= 0.75, m["accuracy_photos"]
    assert m["accuracy_photos"] >= neutral_share + 0.2
    assert m["per_class_photos"]["neutral"]["recall"] >= 0.7  # neutral faces are not called angry or sad
