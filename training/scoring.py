"""Scoring faces with a classifier (batched softmax, flip TTA) and the metrics of those scores.

Shared by `emotion-train` (validation) and `emotion-eval`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    brier_score_loss,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)
from torch import nn

from server.pipeline.preprocess import normalize


def resize_faces(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, S, S) float faces -> (N, 1, size, size) with PIL's bilinear filter (antialiased when
    shrinking), the resize ``training/data.py`` and the server's crop use (pinned by
    tests/test_preprocess_agreement.py)."""
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


@torch.inference_mode()
def predict_proba(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    mean: float,
    std: float,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    tta: str = "none",
    size: int | None = None,
) -> np.ndarray:
    """Softmax scores (N, C) for uint8 faces (N, S, S); ``tta="flip"`` averages with the mirror image.

    ``size`` resizes the faces first (progressive-resizing epochs are validated at the size they train at).
    """
    model.eval()
    x_all = torch.as_tensor(images)
    out = []
    for i in range(0, len(x_all), batch_size):
        x = x_all[i : i + batch_size].to(device).unsqueeze(1).float()
        if size is not None and size != x.shape[-1]:
            x = resize_faces(x, size)
        x = normalize(x, mean, std)
        x = x.contiguous(memory_format=torch.channels_last)
        p = model(x).float().softmax(1)
        if tta == "flip":
            p = (p + model(x.flip(3)).float().softmax(1)) / 2
        out.append(p.cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class P/R/F1/support, one-vs-rest AUC and the confusion matrix.

    Classes absent from ``y_true`` get support 0 and AUC ``None`` (undefined), rather
    than silently skewing the macro averages: macro-F1 averages over present classes.
    """
    y_pred = proba.argmax(1)
    labels = list(range(len(classes)))
    present = sorted(set(np.unique(y_true).tolist()))
    p, r, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(classes):
        auc = None
        if i in present and len(present) > 1:
            auc = float(roc_auc_score((y_true == i).astype(int), proba[:, i]))
        per_class[name] = {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "auc": auc,
        }
    return {
        "n": len(y_true),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "macro_f1": float(np.mean([f1[i] for i in present])) if present else 0.0,
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": list(classes),
        "calibration": calibration_metrics(y_true, proba, classes),
    }


def calibration_metrics(
    y_true: np.ndarray, proba: np.ndarray, classes: list[str], n_bins: int = 15
) -> dict[str, Any] | None:
    """How far the scores can be read as probabilities (``None`` without rows).

    Negative log-likelihood, multiclass Brier score (sum over classes), top-label expected
    calibration error (``n_bins`` equal-width bins, as Guo et al. 2017), mean top score, and for
    each predicted class how often it is right against its mean top score: a model can be
    underconfident on some classes and overconfident on others, which the global ECE averages
    away and one temperature cannot mend (docs/model-card.md, "What a score means").
    """
    from torchmetrics.functional.classification import multiclass_calibration_error

    if len(y_true) == 0:
        return None
    p = np.asarray(proba, dtype=np.float64)
    p = p / p.sum(1, keepdims=True)  # float32 sums drift from 1 by ~1e-7; the scorers expect 1
    labels = list(range(len(classes)))
    conf, pred = p.max(1), p.argmax(1)
    ece = multiclass_calibration_error(
        torch.from_numpy(p), torch.from_numpy(np.asarray(y_true)), len(classes), n_bins=n_bins, norm="l1"
    )
    by_prediction = {
        name: {
            "n": int((pred == i).sum()),
            "mean_confidence": float(conf[pred == i].mean()),
            "precision": float((y_true[pred == i] == i).mean()),
        }
        for i, name in enumerate(classes)
        if (pred == i).any()
    }
    return {
        "nll": float(log_loss(y_true, p, labels=labels)),
        "brier": float(brier_score_loss(y_true, p, labels=labels)),
        "ece": float(ece),
        "ece_bins": n_bins,
        "mean_confidence": float(conf.mean()),
        "by_prediction": by_prediction,
    }
