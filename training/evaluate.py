"""`emotion-eval`: score a checkpoint on any labelled face dataset.

Writes DIR/metrics.json, DIR/confusion.png and DIR/report.md. Classes the model has
but the data lacks are simply absent from the scores; data classes the model lacks
(e.g. CK+ "contempt", or "disgust" for a 3-class model) are skipped and listed.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from server.device import resolve_device
from server.model.checkpoint import (
    DEFAULT_CHECKPOINT,
    CropSpec,
    file_digest,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from shared.emotions import EMOTIONS
from training.data import FaceDataset, load_dataset
from training.scoring import classification_metrics, predict_proba

SPLIT_CHOICES = {
    "private": ("private",),
    "public": ("public",),
    "test": ("public", "private", "test"),
    "train": ("train", "val"),  # e.g. training.photo_crops' crops of the people the fine-tunes train on
    "all": ("train", "val", "public", "private", "test"),
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument(
        "--data", required=True, help="FER2013 CSV/.tar.gz/folder, or any folder of <class>/<images>"
    )
    p.add_argument(
        "--split",
        choices=(*SPLIT_CHOICES, "auto"),
        default="auto",
        help="auto = private if the data has PrivateTest, else its test images, else everything",
    )
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--out", default="runs/eval")
    p.add_argument("--tta", choices=("none", "flip"), default="none", help="test-time augmentation")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument(
        "--bundle",
        metavar="DEST",
        help="also write a copy of the checkpoint (fp16) to DEST with these test metrics in its metadata, "
        "e.g. server/checkpoints/emotion-resnet18.safetensors",
    )
    p.add_argument(
        "--crop-margin",
        type=float,
        help="with --bundle: record this detector-crop margin; with --detect: evaluate with it",
    )
    p.add_argument(
        "--crop-y-shift",
        type=float,
        help="with --bundle: record this detector-crop vertical shift; with --detect: evaluate with it",
    )
    g = p.add_argument_group(
        "whole pipeline (--detect)",
        "photos in <class>/<images> through the server's own decode -> detect -> crop -> classify; "
        "scores the first face per photo (see training/evaluate_photos.py)",
    )
    g.add_argument("--detect", action="store_true", help="evaluate the whole server pipeline on photos")
    g.add_argument("--limit", type=int, default=0, help="score N random photos (seeded), 0 = all")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--crop-square",
        choices=("true", "false"),
        help="with --detect: evaluate with it; with --bundle: record it",
    )
    g.add_argument(
        "--framing-grid",
        metavar="MARGINS:SHIFTS[:SQUARE]",
        help="also score these framings on the same detections, e.g. '0,0.1,0.2:-0.05,0,0.05:true,false'",
    )
    g.add_argument("--no-progress", action="store_true")
    return p


def parse_grid(text: str) -> list[CropSpec]:
    """'0,0.1:-0.05,0[:true,false]' -> every (margin, y_shift, square) combination."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise SystemExit(f"--framing-grid wants MARGINS:SHIFTS[:SQUARE], got {text!r}")
    squares = [s.strip().lower() == "true" for s in parts[2].split(",")] if len(parts) == 3 else [True]
    return [
        CropSpec(margin=float(m), y_shift=float(y), square=sq)
        for sq in squares
        for m in parts[0].split(",")
        for y in parts[1].split(",")
    ]


def crop_override(args: argparse.Namespace) -> CropSpec | None:
    """The checkpoint's crop framing with the --crop-* flags given applied, or None when none is given."""
    if args.crop_margin is None and args.crop_y_shift is None and args.crop_square is None:
        return None
    current = read_meta(args.checkpoint).crop
    return CropSpec(
        margin=current.margin if args.crop_margin is None else args.crop_margin,
        y_shift=current.y_shift if args.crop_y_shift is None else args.crop_y_shift,
        square=current.square if args.crop_square is None else args.crop_square == "true",
    )


def main_detect(args: argparse.Namespace) -> None:
    from training.evaluate_photos import evaluate_photos, write_photo_report

    crop = crop_override(args)
    device = resolve_device(args.device)
    metrics = evaluate_photos(
        args.data,
        args.checkpoint,
        device=device,
        limit=args.limit,
        batch_size=min(args.batch_size, 64),
        crop=crop,
        framings=parse_grid(args.framing_grid) if args.framing_grid else (),
        seed=args.seed,
        progress=not args.no_progress,
    )
    write_photo_report(metrics, Path(args.out))
    fpp = metrics["faces_per_photo"]
    print(
        f"photos={metrics['n_photos']} faces 0/1/2+ = {fpp['0']}/{fpp['1']}/{fpp['2+']} "
        f"accuracy_photos={metrics['accuracy_photos']:.4f} "
        f"accuracy_first_face={metrics['accuracy_first_face']:.4f}"
        + (f" ece={cal['ece']:.4f}" if (cal := metrics["calibration_first_face"]) else "")
        + f" -> {args.out}/metrics.json"
    )


def resolve_split(ds: FaceDataset, split: str) -> tuple[str, FaceDataset]:
    if split == "auto":
        present = set(ds.splits.tolist())
        split = "private" if "private" in present else "test" if present & {"public", "test"} else "all"
    sub = ds.subset(*SPLIT_CHOICES[split])
    if len(sub) == 0:
        raise SystemExit(f"split {split!r} is empty in this data; it has {ds.split_counts()}")
    return split, sub


@dataclass
class SplitScores:
    """A checkpoint's scores on one split, in the checkpoint's class order."""

    split: str
    y: np.ndarray  # (N,) class indices into ``classes``
    proba: np.ndarray  # (N, C)
    classes: list[str]
    skipped: dict[str, int]
    data_fingerprint: str


def score_split(
    data: str | Path,
    checkpoint: str | Path = DEFAULT_CHECKPOINT,
    split: str = "auto",
    tta: str = "none",
    device: str = "auto",
    batch_size: int = 512,
    prior_shift: bool = True,
) -> SplitScores:
    """Score every face of ``split`` with the checkpoint's torch model (faces of classes it lacks are
    skipped and counted), its prior shift applied as the server applies it unless ``prior_shift`` is
    false."""
    dev = torch.device(resolve_device(device))
    model, meta = load_checkpoint(checkpoint, dev)
    model = model.to(memory_format=torch.channels_last)
    ds = load_dataset(data, size=meta.input_size)
    split, sub = resolve_split(ds, split)
    skipped = sub.skipped_counts()
    keep = np.isin(sub.labels, [EMOTIONS.index(c) for c in meta.classes])
    for label in np.unique(sub.labels[~keep]):
        skipped[EMOTIONS[label]] = int((sub.labels == label).sum())
    images = sub.images[keep]
    y = np.array([meta.classes.index(EMOTIONS[i]) for i in sub.labels[keep]], dtype=np.int64)
    proba = predict_proba(model, images, meta.mean, meta.std, device=dev, batch_size=batch_size, tta=tta)
    if prior_shift:
        proba = meta.shifted(torch.from_numpy(proba)).numpy()
    return SplitScores(split, y, proba, meta.classes, skipped, ds.fingerprint())


def evaluate_checkpoint(
    data: str | Path,
    checkpoint: str | Path = DEFAULT_CHECKPOINT,
    split: str = "auto",
    tta: str = "none",
    device: str = "auto",
    batch_size: int = 512,
) -> dict[str, Any]:
    scores = score_split(data, checkpoint, split, tta, device, batch_size)
    metrics = classification_metrics(scores.y, scores.proba, scores.classes)
    metrics |= {
        "data_fingerprint": scores.data_fingerprint,
        "split": scores.split,
        "tta": tta,
        "skipped": scores.skipped,
        "checkpoint": {
            "path": str(checkpoint),
            "name": read_meta(checkpoint).name,
            "sha256_12": file_digest(checkpoint),
        },
        "data": str(data),
    }
    return metrics


def write_report(metrics: dict[str, Any], out: Path) -> None:
    from training.report import calibration_lines, plot_confusion

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    title = f"{metrics['split']} (n={metrics['n']}, acc {metrics['accuracy']:.1%}, TTA {metrics['tta']})"
    plot_confusion(metrics["confusion_matrix"], metrics["classes"], out / "confusion.png", title)
    lines = [
        f"# Evaluation of `{metrics['checkpoint']['name']}` ({metrics['checkpoint']['sha256_12']})",
        "",
        f"Data `{metrics['data']}`, split **{metrics['split']}**, n = {metrics['n']}, "
        f"test-time augmentation: **{metrics['tta']}**.",
        "",
        f"- accuracy: **{metrics['accuracy']:.2%}**",
        f"- macro F1: **{metrics['macro_f1']:.4f}**",
    ]
    if metrics["skipped"]:
        lines.append(f"- skipped (classes the model lacks or unknown names): {metrics['skipped']}")
    lines += [
        "",
        "| class | precision | recall | F1 | AUC (OvR) | support |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in metrics["per_class"].items():
        auc = "n/a" if m["auc"] is None else f"{m['auc']:.3f}"
        lines.append(
            f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {auc} | {m['support']} |"
        )
    lines += calibration_lines(metrics["calibration"])
    lines += ["", "![confusion matrix](confusion.png)", ""]
    (out / "report.md").write_text("\n".join(lines))


def bundle(
    checkpoint: str | Path, dest: str | Path, metrics: dict[str, Any], crop: CropSpec | None = None
) -> Path:
    """Copy a checkpoint with these metrics (and the measured crop framing) recorded in its metadata.

    A PublicTest score goes in as ``validation`` (what a weight average, whose ingredients' scores
    are not its own, gets measured on), any other split as ``test``. The server reports both in
    /v1/info and crops faces as ``crop`` says (see bench/framing.py).
    """
    model, meta = load_checkpoint(checkpoint)
    if crop is not None:
        meta.crop = crop
    summary_keys = ("split", "tta", "n", "accuracy", "macro_f1", "data_fingerprint")
    summary = {k: metrics[k] for k in summary_keys} | {
        "recall": {c: round(m["recall"], 4) for c, m in metrics["per_class"].items()}
    }
    if metrics["split"] == "public":  # emotion-train's own key, for readers of either kind
        meta.metrics["validation"] = summary | {"val_acc": metrics["accuracy"], "val_tta": metrics["tta"]}
    else:
        meta.metrics["test"] = summary
    return save_checkpoint(dest, model, meta)


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.detect:
        if args.bundle or args.tta != "none":
            raise SystemExit("--detect scores photos as the server answers them: no --bundle or --tta")
        main_detect(args)
        return
    metrics = evaluate_checkpoint(
        args.data, args.checkpoint, args.split, args.tta, args.device, args.batch_size
    )
    write_report(metrics, Path(args.out))
    if args.bundle:
        print(f"bundled -> {bundle(args.checkpoint, args.bundle, metrics, crop_override(args))}")
    print(
        f"{metrics['split']}: n={metrics['n']} accuracy={metrics['accuracy']:.4f} "
        f"macro_f1={metrics['macro_f1']:.4f} nll={metrics['calibration']['nll']:.4f} "
        f"ece={metrics['calibration']['ece']:.4f} tta={metrics['tta']} -> {args.out}/metrics.json"
    )


if __name__ == "__main__":
    main()
