"""`emotion-eval --detect`: the whole server pipeline on labelled photos.

``emotion-eval`` without ``--detect`` scores face crops. Users send photos and webcam
frames, so this mode runs what the server runs on each one: the server's own decoder
(:func:`server.pipeline.decode.decode_image`), its pipeline as
:func:`server.pipeline.runner.build_pipeline` builds it from :class:`server.config.Settings`
(detect -> crop -> classify, :class:`server.pipeline.runner.Pipeline`), and its face
order, and scores the face the server returns first.

The data is a folder of ``<class>/<images>``; class names go through
:func:`shared.emotions.canonical_emotion` (``happiness``, ``anger``, ...). Classes that
are no emotion the model knows (``contempt``) are skipped and counted.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from server.api.options import default_options
from server.config import Settings
from server.model.checkpoint import CropSpec, file_digest
from server.pipeline.crop import crop_faces
from server.pipeline.decode import DecodedImage, DecodeError, decode_image
from server.pipeline.runner import Job, JobResult, Pipeline, work_size
from shared.emotions import canonical_emotion
from training.data import IMAGE_SUFFIXES
from training.scoring import classification_metrics

NO_FACE = "no face"


@dataclass(frozen=True)
class Photo:
    path: Path
    folder: str  # the class folder's own name
    label: str | None  # canonical emotion, None if the folder is no known emotion


def list_photos(root: str | Path, limit: int = 0, seed: int = 0) -> list[Photo]:
    """Images under ``root/<class>/``, sorted; ``limit`` > 0 draws that many at random (seeded)."""
    root = Path(root)
    if not root.is_dir():
        raise SystemExit(f"--detect needs a folder of <class>/<images>; {root} is not a folder")
    photos = [
        Photo(p, p.parent.name, canonical_emotion(p.parent.name))
        for p in sorted(root.glob("*/*"))
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not photos:
        raise SystemExit(f"no images in {root}/<class>/")
    if 0 < limit < len(photos):
        photos = sorted(random.Random(seed).sample(photos, limit), key=lambda p: p.path)
    return photos


def build_server_pipeline(
    checkpoint: str | Path,
    device: str,
    crop: CropSpec | None = None,
    detector_layout: str | None = None,
    detector: str | None = None,
) -> tuple[Pipeline, Settings]:
    """The pipeline exactly as ``emotion-server`` builds it (through the same
    :class:`~emotion_service.EmotionAnalyzer`, from Settings and their defaults, including
    ``EMOTION_*`` variables), optionally with another detector (``EMOTION_DETECTOR``'s
    values), another crop framing than the checkpoint's, or (for before/after measurements,
    bench/phantoms.py) another SSD head layout."""
    from emotion_service.analyzer import EmotionAnalyzer

    chosen: dict[str, Any] = {"detector": detector} if detector is not None else {}
    cfg = Settings(checkpoint=Path(checkpoint), device=device, **chosen)
    pipeline = EmotionAnalyzer.from_settings(cfg).pipeline
    if crop is not None:
        pipeline.classifier.meta.crop = crop
    if detector_layout is not None:
        from server.pipeline.detect import SSDFaceDetector, locate_weights

        pipeline.detector = SSDFaceDetector(
            locate_weights(), cfg.detector_options(), device, cfg.cache_dir, layout=detector_layout
        )
    return pipeline, cfg


def _decode(photo: Photo, max_pixels: int, work: tuple[int, int] | None = None) -> DecodedImage | None:
    try:
        return decode_image(photo.path.read_bytes(), max_pixels=max_pixels, work_size=work)
    except (DecodeError, OSError):
        return None


def decoded_batches(
    photos: Sequence[Photo], size: int, max_pixels: int, threads: int, work: tuple[int, int] | None = None
) -> Iterator[list[tuple[Photo, DecodedImage | None]]]:
    """Decoded photos in batches, decoding the next batch while the caller runs this one; ``work``: the
    server's ``work_size`` (a large photo decoded reduced, as the server decodes it)."""
    with ThreadPoolExecutor(threads) as pool:
        chunks = [photos[i : i + size] for i in range(0, len(photos), size)]
        pending = [pool.submit(_decode, p, max_pixels, work) for p in chunks[0]] if chunks else []
        for k, chunk in enumerate(chunks):
            done = [f.result() for f in pending]
            if k + 1 < len(chunks):
                pending = [pool.submit(_decode, p, max_pixels, work) for p in chunks[k + 1]]
            yield list(zip(chunk, done, strict=True))


def evaluate_photos(
    data: str | Path,
    checkpoint: str | Path,
    device: str = "cpu",
    limit: int = 0,
    batch_size: int = 16,
    crop: CropSpec | None = None,
    framings: Sequence[CropSpec] = (),
    seed: int = 0,
    decode_threads: int = 2,
    progress: bool = True,
    detector_layout: str | None = None,
) -> dict[str, Any]:
    """Run the server pipeline on every photo and score the first face it returns.

    ``crop`` replaces the checkpoint's framing for the main run; each of ``framings`` is
    also scored on the same detections (only the crop and the classifier run again).
    """
    from tqdm import tqdm

    pipeline, cfg = build_server_pipeline(checkpoint, device, crop, detector_layout)
    classes = pipeline.classifier.classes
    options = default_options(cfg)  # what POST /v1/predict uses when a request sets no limits
    max_pixels = cfg.max_pixels
    photos = list_photos(data, limit, seed)
    skipped: Counter[str] = Counter(p.folder for p in photos if p.label not in classes)
    scored = [p for p in photos if p.label in classes]
    faces_per_photo: Counter[str] = Counter()
    undecodable: list[str] = []
    y_true: list[int] = []  # every scored photo
    top_proba: list[np.ndarray | None] = []  # its first face's probabilities, None without a face
    grid_correct = np.zeros(len(framings), dtype=np.int64)
    per_photo: list[dict[str, Any]] = []
    bar = tqdm(total=len(scored), unit="photo", disable=not progress, desc="photos")
    for batch in decoded_batches(scored, batch_size, max_pixels, decode_threads, work_size(cfg)):
        good = [(p, img) for p, img in batch if img is not None]
        undecodable += [str(p.path) for p, img in batch if img is None]
        results: list[JobResult] = pipeline.run([Job(img, options) for _, img in good]) if good else []
        by_path = {p.path: r for (p, _), r in zip(good, results, strict=True)}
        for p, _ in batch:
            r = by_path.get(p.path)
            n = len(r.faces) if r is not None else 0
            faces_per_photo["0" if n == 0 else "1" if n == 1 else "2+"] += 1
            y_true.append(classes.index(str(p.label)))
            top_proba.append(r.faces[0].probs if r is not None and n else None)
            per_photo.append(
                {
                    "path": str(p.path),
                    "label": p.label,
                    "faces": n,
                    "first": classes[int(np.argmax(r.faces[0].probs))] if r is not None and n else None,
                    "box": [round(v, 1) for v in r.faces[0].box] if r is not None and n else None,
                    "scores": [round(float(v), 5) for v in r.faces[0].probs] if r is not None and n else None,
                }
            )
        if framings:
            firsts = [(p, img, r.faces[0]) for (p, img), r in zip(good, results, strict=True) if r.faces]
            if firsts:
                images = [img.tensor.to(pipeline.device) for _, img, _ in firsts]
                boxes = [  # the face box is in the photo's pixels, the tensor may be reduced
                    img.in_tensor_pixels(torch.tensor([f.box], dtype=torch.float32, device=pipeline.device))
                    for _, img, f in firsts
                ]
                truth = np.array([classes.index(str(p.label)) for p, _, _ in firsts])
                for k, spec in enumerate(framings):
                    crops = crop_faces(images, boxes, spec, pipeline.classifier.input_size)
                    pred = pipeline.classifier.predict(crops).argmax(1).numpy()
                    grid_correct[k] += int((pred == truth).sum())
        bar.update(len(batch))
    bar.close()
    return photo_metrics(
        np.asarray(y_true, dtype=np.int64),
        top_proba,
        classes,
        faces_per_photo,
        skipped,
        undecodable,
        extra={
            "data": str(data),
            "limit": limit,
            "seed": seed,
            "checkpoint": {
                "path": str(checkpoint),
                "name": pipeline.classifier.meta.name,
                "sha256_12": file_digest(checkpoint),
            },
            "crop": pipeline.classifier.meta.crop.model_dump(),
            "detector": {
                "name": pipeline.detector.name,
                "input_size": list(cfg.detector_input_size),
                "score_threshold": options.min_confidence,
                "max_faces": options.max_faces,
                "layout": getattr(getattr(pipeline.detector, "model", None), "layout", None),
            },
            "framings": [
                spec.model_dump() | {"accuracy_photos": int(c) / max(len(scored), 1)}
                for spec, c in zip(framings, grid_correct, strict=True)
            ],
            "photos": per_photo,
        },
    )


def photo_metrics(
    y_true: np.ndarray,
    top_proba: Sequence[np.ndarray | None],
    classes: list[str],
    faces_per_photo: Counter[str],
    skipped: Counter[str],
    undecodable: list[str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Scores of the first face per photo: over photos with a face (the usual metrics), and over
    all photos, where a photo without a face counts as wrong."""
    has_face = np.array([p is not None for p in top_proba], dtype=bool)
    n = len(y_true)
    proba = (
        np.stack([p for p in top_proba if p is not None]) if has_face.any() else np.zeros((0, len(classes)))
    )
    detected = classification_metrics(y_true[has_face], proba, classes)
    pred = np.full(n, -1, dtype=np.int64)
    pred[has_face] = proba.argmax(1)
    names = [*classes, NO_FACE]

    def histogram(mask: np.ndarray) -> dict[str, int]:
        counts = Counter(names[i] for i in pred[mask])
        return {c: counts.get(c, 0) for c in names}

    recall_photos = {
        c: {
            "recall": float((pred[y_true == i] == i).mean()) if (y_true == i).any() else None,
            "support": int((y_true == i).sum()),
            "no_face": int(((y_true == i) & ~has_face).sum()),
        }
        for i, c in enumerate(classes)
    }
    return {
        "mode": "detect",
        "n_photos": n,
        "faces_per_photo": {k: faces_per_photo.get(k, 0) for k in ("0", "1", "2+")},
        "accuracy_photos": float((pred == y_true).mean()) if n else 0.0,
        "accuracy_first_face": detected["accuracy"],
        "macro_f1_first_face": detected["macro_f1"],
        "n_with_face": int(has_face.sum()),
        "per_class": detected["per_class"],
        "per_class_photos": recall_photos,
        "confusion_matrix": detected["confusion_matrix"],
        "calibration_first_face": detected["calibration"],
        "classes": classes,
        "predicted_histogram": histogram(np.ones(n, dtype=bool)),
        "predicted_histogram_by_true": {c: histogram(y_true == i) for i, c in enumerate(classes)},
        "skipped": dict(skipped),
        "undecodable": undecodable,
    } | (extra or {})


def write_photo_report(metrics: dict[str, Any], out: Path) -> None:
    """metrics.json, confusion.png (first faces) and report.md, like ``emotion-eval`` writes."""
    import json

    from training.report import calibration_lines, plot_confusion

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    n = metrics["n_photos"]
    title = (
        f"first face, {metrics['n_with_face']}/{n} photos with a face "
        f"(acc {metrics['accuracy_first_face']:.1%}; all photos {metrics['accuracy_photos']:.1%})"
    )
    plot_confusion(metrics["confusion_matrix"], metrics["classes"], out / "confusion.png", title)
    fpp = metrics["faces_per_photo"]
    crop = metrics["crop"]
    det = metrics["detector"]
    lines = [
        f"# Whole-pipeline evaluation of `{metrics['checkpoint']['name']}` "
        f"({metrics['checkpoint']['sha256_12']})",
        "",
        f"Photos `{metrics['data']}`: {n} scored"
        + (f" (random {metrics['limit']}, seed {metrics['seed']})" if metrics["limit"] else "")
        + f". Detector {det['name']} {det['input_size']}, score > {det['score_threshold']}; "
        f"crop margin {crop['margin']}, y_shift {crop['y_shift']}, square {crop['square']}.",
        "",
        "- faces per photo: " + ", ".join(f"{k}: {v} ({v / max(n, 1):.1%})" for k, v in fpp.items()),
        f"- accuracy over photos (no face = wrong): **{metrics['accuracy_photos']:.2%}**",
        f"- accuracy of the first face, photos with a face: **{metrics['accuracy_first_face']:.2%}** "
        f"(n = {metrics['n_with_face']}), macro F1 {metrics['macro_f1_first_face']:.4f}",
    ]
    if metrics["skipped"]:
        lines.append(f"- skipped (classes the model lacks or unknown names): {metrics['skipped']}")
    if metrics["undecodable"]:
        lines.append(f"- undecodable (counted as no face): {len(metrics['undecodable'])}")
    lines += [
        "",
        "| class | photos | no face | recall, all photos | precision | recall | F1 (first face) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c, m in metrics["per_class"].items():
        ph = metrics["per_class_photos"][c]
        rec = "n/a" if ph["recall"] is None else f"{ph['recall']:.3f}"
        lines.append(
            f"| {c} | {ph['support']} | {ph['no_face']} | {rec} | {m['precision']:.3f} | "
            f"{m['recall']:.3f} | {m['f1']:.3f} |"
        )
    names = [*metrics["classes"], NO_FACE]
    lines += [
        "",
        "Predicted classes (first face):",
        "",
        "| true | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
        "| all | " + " | ".join(str(metrics["predicted_histogram"][c]) for c in names) + " |",
    ]
    for true, hist in metrics["predicted_histogram_by_true"].items():
        if sum(hist.values()):
            lines.append(f"| {true} | " + " | ".join(str(hist[c]) for c in names) + " |")
    if metrics["framings"]:
        lines += [
            "",
            "Framing grid (same detections, first face; accuracy over photos):",
            "",
            "| margin | y_shift | square | accuracy |",
            "| ---: | ---: | --- | ---: |",
        ]
        lines += [
            f"| {f['margin']:.2f} | {f['y_shift']:+.2f} | {f['square']} | {f['accuracy_photos']:.2%} |"
            for f in metrics["framings"]
        ]
    lines += calibration_lines(metrics["calibration_first_face"])
    lines += ["", "![confusion matrix](confusion.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
