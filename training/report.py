"""Plots for training curves and confusion matrices (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def plot_curves(log_path: Path, out: Path) -> Path:
    rows = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    ep = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(ep, [r["train_loss"] for r in rows], label="train loss")
    ax1.set_xlabel("epoch")
    ax1.legend()
    ax2.plot(ep, [r["train_acc"] for r in rows], label="train acc (augmented)")
    for key in ("val_acc_raw", "val_acc_ema"):
        if key in rows[0]:
            ax2.plot(ep, [r[key] for r in rows], label=key.replace("_", " "))
    ax2.set_xlabel("epoch")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_confusion(cm: list[list[int]], classes: list[str], out: Path, title: str = "") -> Path:
    m = np.asarray(cm, dtype=float)
    norm = m / m.sum(1, keepdims=True).clip(min=1)
    fig, ax = plt.subplots(figsize=(6, 5.2))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                f"{norm[i, j]:.2f}\n{int(m[i, j])}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_title(title or "confusion matrix (row-normalised)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def calibration_lines(cal: dict[str, Any] | None) -> list[str]:
    """The report's "What a score means" part from ``training.scoring.calibration_metrics``."""
    if cal is None:
        return []
    lines = [
        "",
        "What a score means (calibration): "
        f"NLL {cal['nll']:.4f}, Brier {cal['brier']:.4f}, "
        f"ECE {cal['ece']:.2%} ({cal['ece_bins']} bins), mean top score {cal['mean_confidence']:.3f}.",
        "",
        "| predicted | faces | mean top score | right (precision) |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {name} | {m['n']} | {m['mean_confidence']:.3f} | {m['precision']:.3f} |"
        for name, m in cal["by_prediction"].items()
    ]
    return lines
