"""The bundled checkpoint reproduces the PrivateTest number its model card states (needs FER2013)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.model.checkpoint import DEFAULT_CHECKPOINT, read_meta
from training.evaluate import evaluate_checkpoint

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
