"""Metrics checked against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from training.scoring import calibration_metrics, classification_metrics


def test_metrics_match_hand_computation() -> None:
    classes = ["happy", "sad", "neutral"]
    y = np.array([0, 0, 0, 1, 1, 2])
    # predictions: 0,0,1 | 1,2 | 2  -> confusion [[2,1,0],[0,1,1],[0,0,1]]
    proba = np.array(
        [[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1], [0.1, 0.7, 0.2], [0.1, 0.3, 0.6], [0.2, 0.2, 0.6]]
    )
    m = classification_metrics(y, proba, classes)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # happy: P=2/2, R=2/3 -> F1=0.8; sad: P=1/2, R=1/2 -> 0.5; neutral: P=1/2, R=1 -> 2/3
    assert m["per_class"]["happy"]["precision"] == pytest.approx(1.0)
    assert m["per_class"]["happy"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["sad"]["f1"] == pytest.approx(0.5)
    assert m["per_class"]["neutral"]["f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    # happy-vs-rest AUC: positives scores {.8,.6,.3}, negatives {.1,.1,.2}: every pair ordered -> 1.0
    assert m["per_class"]["happy"]["auc"] == pytest.approx(1.0)
    # neutral-vs-rest: positive .6; negatives .1,.1,.1,.2,.6 -> (4 + 0.5) / 5
    assert m["per_class"]["neutral"]["auc"] == pytest.approx(0.9)


def test_absent_class_has_zero_support_and_no_auc() -> None:
    m = classification_metrics(
        np.array([0, 1]), np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]]), ["a", "b", "c"]
    )
    assert m["per_class"]["c"]["support"] == 0 and m["per_class"]["c"]["auc"] is None
    assert m["macro_f1"] == pytest.approx(1.0)


def test_calibration_matches_hand_computation() -> None:
    classes = ["a", "b", "c"]
    y = np.array([0, 0, 1, 2])
    proba = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    cal = classification_metrics(y, proba, classes)["calibration"]
    assert cal["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.6, 0.3, 0.6])))
    onehot = np.eye(3)[y]
    assert cal["brier"] == pytest.approx(((proba - onehot) ** 2).sum(1).mean())
    # top scores 0.9 (right) | 0.6, 0.6, 0.6 (right, wrong, right) in 15 equal bins:
    # 1/4 * |1 - 0.9| + 3/4 * |2/3 - 0.6| = 0.025 + 0.05
    assert cal["ece"] == pytest.approx(0.075, abs=1e-6)
    assert cal["mean_confidence"] == pytest.approx(0.675)
    assert cal["by_prediction"]["a"] == pytest.approx({"n": 3, "mean_confidence": 0.7, "precision": 2 / 3})
    assert cal["by_prediction"]["c"] == pytest.approx({"n": 1, "mean_confidence": 0.6, "precision": 1.0})
    assert "b" not in cal["by_prediction"]  # never predicted: no precision to report


def test_calibration_of_nothing_is_none() -> None:
    assert calibration_metrics(np.zeros(0, dtype=int), np.zeros((0, 2)), ["a", "b"]) is None
