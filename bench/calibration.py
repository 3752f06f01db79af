"""What the server's scores mean: calibration, one temperature (not adopted) and the prior shift (adopted).

* **Calibration** of the bundled checkpoint (``emotion-eval``'s block: NLL, Brier, top-label ECE
  over 15 bins, per predicted class its mean top score against how often it is right) on FER2013
  PrivateTest (the torch reference path, no TTA) and on the held-out real photos (the server's
  whole pipeline in its default configuration, first face), with the checkpoint's prior shift
  (as served) and without it (the network's own scores).
* **One temperature** (logits / T, fitted by NLL) on the network's own scores: on PublicTest, scored
  on PrivateTest and the photos; and on each half of the held-out people (folds of
  ``training.photo_folds``), scored on the other half, so no photo scores a temperature fitted on it.
* **The prior shift** (``training.prior_shift``): scores x (pi_photos / pi_model)^alpha, renormalised,
  from the labels of the people the fine-tunes trained on and the model's mean scores on their
  crops, for a grid of alphas (the checkpoint's alpha was chosen on PublicTest); scored on
  PublicTest, PrivateTest and the held-out photos.

Needs ``python -m training.photo_crops --data ../shared/data/realfaces-dev --out runs/rc3`` (the
full run: its training crops as well as the held-out links). Prints Markdown and, unless
``--no-write``, writes it between markers in docs/model-card.md ("What a score means").

    python bench/calibration.py          # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from docsection import write_marked  # bench/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from scipy.optimize import minimize_scalar  # noqa: E402

from server.model.checkpoint import DEFAULT_CHECKPOINT, read_meta, shift_scores  # noqa: E402
from training.evaluate import score_split  # noqa: E402
from training.evaluate_photos import evaluate_photos  # noqa: E402
from training.photo_crops import person_of  # noqa: E402
from training.photo_folds import fold_of  # noqa: E402
from training.prior_shift import log_ratio, shifted  # noqa: E402
from training.scoring import calibration_metrics  # noqa: E402

MARKERS = ("<!-- calibration: start -->", "<!-- calibration: end -->")
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "fer2013.tar.gz")
    p.add_argument("--crops", type=Path, default=REPO / "runs" / "rc3", help="training.photo_crops output")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "model-card.md")
    p.add_argument("--no-write", action="store_true", help="print only")
    return p


def tempered(proba: np.ndarray, t: float) -> np.ndarray:
    """softmax(logits / t) from softmax(logits): log-probabilities are the logits up to a constant."""
    z = np.log(np.clip(proba, 1e-12, None)) / t
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def nll(proba: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, None)).mean())


def fit_temperature(proba: np.ndarray, y: np.ndarray) -> float:
    r = minimize_scalar(lambda lt: nll(tempered(proba, np.exp(lt)), y), bounds=(-3, 3), method="bounded")
    return float(np.exp(r.x))


def cal_row(name: str, proba: np.ndarray, y: np.ndarray, classes: list[str]) -> str:
    """``name`` holds the first two cells (set | scores)."""
    c = calibration_metrics(y, proba, classes)
    assert c is not None
    acc = float((proba.argmax(1) == y).mean())
    return (
        f"| {name} | {len(y):,} | {acc:.2%} | {c['nll']:.4f} | {c['brier']:.4f} | {c['ece']:.2%} | "
        f"{c['mean_confidence']:.3f} |"
    )


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    meta = read_meta(args.checkpoint)
    classes = meta.classes
    public = score_split(args.data, args.checkpoint, "public", device="cpu", prior_shift=False)
    private = score_split(args.data, args.checkpoint, "private", device="cpu", prior_shift=False)
    private_served = score_split(args.data, args.checkpoint, "private", device="cpu")
    train_crops = score_split(args.crops / "crops", args.checkpoint, "train", device="cpu", prior_shift=False)
    photos = evaluate_photos(args.crops / "heldout", args.checkpoint, progress=False)
    firsts = [p for p in photos["photos"] if p["faces"]]
    served = np.array([p["scores"] for p in firsts], dtype=np.float64)
    # the network's own scores: the server's with the shift taken off again
    ph_p = shift_scores(torch.from_numpy(served), -meta.shift_vector().double()).numpy()
    ph_y = np.array([classes.index(p["label"]) for p in firsts])
    folds = np.array([fold_of(person_of(Path(p["path"]))) for p in firsts])

    def by_prediction(y: np.ndarray, proba: np.ndarray) -> dict[str, dict[str, float]]:
        cal = calibration_metrics(y, proba, classes)
        assert cal is not None
        by: dict[str, dict[str, float]] = cal["by_prediction"]
        return by

    lines = [
        "Calibration (`emotion-eval`'s block; ECE over 15 equal-width bins of the top score), the "
        "network's own scores and as served (with the checkpoint's prior shift):",
        "",
        "| set | scores | faces | accuracy | NLL | Brier | ECE | mean top score |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        cal_row("FER2013 PrivateTest (torch, no TTA) | own", private.proba, private.y, classes),
        cal_row(
            "FER2013 PrivateTest (torch, no TTA) | served", private_served.proba, private_served.y, classes
        ),
        cal_row("held-out real photos, first face (default path) | own", ph_p, ph_y, classes),
        cal_row("held-out real photos, first face (default path) | served", served, ph_y, classes),
        "",
        "Held-out photos by predicted class: how many faces, their mean top score, how often the answer "
        "is right:",
        "",
        "| predicted | own: faces | mean top score | right | served: faces | mean top score | right |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    own, shown = by_prediction(ph_y, ph_p), by_prediction(ph_y, served)
    for c in classes:
        cells = [
            f"{m['n']} | {m['mean_confidence']:.3f} | {m['precision']:.3f}" if m else "0 | - | -"
            for m in (own.get(c), shown.get(c))
        ]
        lines.append(f"| {c} | {cells[0]} | {cells[1]} |")

    t_pub = fit_temperature(public.proba, public.y)
    lines += [
        "",
        "One temperature on the network's own scores, fitted by NLL on one set and scored on another "
        "(NLL / ECE at T = 1 -> at the fitted T):",
        "",
        "| fitted on | T | scored on | NLL | ECE |",
        "| --- | ---: | --- | --- | --- |",
    ]

    def t_row(fit_name: str, t: float, name: str, proba: np.ndarray, y: np.ndarray) -> str:
        a, b = calibration_metrics(y, proba, classes), calibration_metrics(y, tempered(proba, t), classes)
        assert a is not None and b is not None
        return (
            f"| {fit_name} | {t:.3f} | {name} | {a['nll']:.4f} -> {b['nll']:.4f} | "
            f"{a['ece']:.2%} -> {b['ece']:.2%} |"
        )

    lines.append(t_row("PublicTest", t_pub, "PrivateTest", private.proba, private.y))
    lines.append(t_row("PublicTest", t_pub, "held-out photos", ph_p, ph_y))
    for fit, other in (("A", "B"), ("B", "A")):
        t = fit_temperature(ph_p[folds == fit], ph_y[folds == fit])
        fitted, scored = f"photos, fold {fit} ({(folds == fit).sum()})", f"photos, fold {other}"
        lines.append(t_row(fitted, t, scored, ph_p[folds == other], ph_y[folds == other]))
    t_all = fit_temperature(ph_p, ph_y)
    lines.append(t_row("all held-out photos", t_all, "PrivateTest", private.proba, private.y))

    ratio = log_ratio(train_crops.y, train_crops.proba)
    counts = np.bincount(train_crops.y, minlength=len(classes))
    lines += [
        "",
        f"The prior shift for alphas from 0 to 1 ({len(train_crops.y):,} training-people crops; labels "
        + ", ".join(
            f"{c} {n} vs mean score {m:.3f}"
            for c, n, m in zip(classes, counts, train_crops.proba.mean(0), strict=True)
        )
        + f"; the checkpoint's alpha: {meta.metrics.get('prior_shift', {}).get('alpha', 'none')}):",
        "",
        "| alpha | PublicTest | PrivateTest | held-out photos (first face) | macro-F1 (photos) "
        "| photos called fear / angry / sad | ECE (photos) |",
        "| ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    from sklearn.metrics import f1_score

    for alpha in ALPHAS:
        pp = shifted(ph_p, alpha * ratio)
        pred = pp.argmax(1)
        accs = [float((shifted(s.proba, alpha * ratio).argmax(1) == s.y).mean()) for s in (public, private)]
        called = " / ".join(str(int((pred == classes.index(c)).sum())) for c in ("fear", "angry", "sad"))
        cal = calibration_metrics(ph_y, pp, classes)
        assert cal is not None
        lines.append(
            f"| {alpha:g} | {accs[0]:.2%} | {accs[1]:.2%} | {float((pred == ph_y).mean()):.2%} | "
            f"{f1_score(ph_y, pred, average='macro'):.4f} | {called} | {cal['ece']:.2%} |"
        )
    lines += ["", "Reproduce: `python bench/calibration.py`"]
    block = "\n".join(lines)
    print(block)
    if not args.no_write:
        write_marked(args.out, *MARKERS, block)


if __name__ == "__main__":
    main()
