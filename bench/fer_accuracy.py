"""Accuracy side by side with the ``fer`` package: real photos (whole pipeline) and FER2013 PrivateTest.

``bench/vs_fer.py`` compares speed; this compares the answers. Both run on the same inputs:

* **Real photos, whole pipeline**: each photo of a labelled ``<class>/<images>`` folder (by
  default the held-out people of realfaces-dev, ``runs/rc3/heldout``, written by
  ``python -m training.photo_crops --data ../shared/data/realfaces-dev --out runs/rc3
  --heldout-only``). Ours: the server's decode -> detect -> crop -> classify in its default
  configuration (``emotion-eval --detect``'s code), its first face. ``fer``: ``cv2.imread`` then
  ``FER().detect_emotions`` (its default Haar detector), its largest face. A photo where a
  side finds no face counts wrong for that side.
* **FER2013 PrivateTest, classifier alone** (the 48x48 crops are the faces): ours as the server
  answers ``POST /v1/predict?detect=false`` on this machine (its default classifier path: the
  int8 build on a CPU with OpenVINO); ``fer``'s classifier on each face prepared as its
  ``detect_emotions`` prepares one (64x64, scaled to [-1, 1]).

The peer runs in its own virtualenv (``.fer/venv``, installed on first use by bench/vs_fer.py's
code). Prints a table and (unless ``--no-write``) writes the "## Accuracy versus fer" section of
docs/benchmarks.md.

    python bench/fer_accuracy.py                 # ~3 min on 2 cores (+ the peer's install once)
    python bench/fer_accuracy.py --photos DIR --no-write
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from backend_parity import FER2013, private_test, server_answers  # bench/ is on sys.path when run as a script
from docsection import write_section
from vs_fer import FerWorker

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.model.checkpoint import DEFAULT_CHECKPOINT  # noqa: E402
from shared.emotions import EMOTIONS  # noqa: E402

SECTION = "## Accuracy versus fer"
HELDOUT = REPO / "runs" / "rc3" / "heldout"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=Path, default=HELDOUT, help="labelled <class>/<images> folder")
    p.add_argument("--data", type=Path, default=FER2013, help="FER2013 (for PrivateTest); '' to skip")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true", help="print only")
    return p


def scores(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Accuracy over all items and macro-F1 over the classes present; pred -1 (no face) is wrong."""
    from sklearn.metrics import f1_score

    present = sorted(set(y.tolist()))
    f1 = f1_score(y, pred, labels=present, average="macro", zero_division=0)
    return {"accuracy": float((pred == y).mean()), "macro_f1": float(f1), "n": len(y)}


def photos_side_by_side(folder: Path, checkpoint: Path, fer: FerWorker) -> dict[str, Any]:
    from training.evaluate_photos import evaluate_photos

    ours = evaluate_photos(folder, checkpoint, progress=False)
    rows = ours["photos"]
    y = np.array([EMOTIONS.index(r["label"]) for r in rows])
    our_pred = np.array([EMOTIONS.index(r["first"]) if r["first"] else -1 for r in rows])
    theirs = fer.call({"photos": [r["path"] for r in rows]})["results"]
    fer_pred = np.array([EMOTIONS.index(t["label"]) if t["label"] else -1 for t in theirs])

    def faces(counts: list[int]) -> str:
        c = Counter("0" if n == 0 else "1" if n == 1 else "2+" for n in counts)
        return f"{c['0']:,} / {c['1']:,} / {c['2+']:,}"

    return {
        "ours": scores(y, our_pred) | {"faces": faces([r["faces"] for r in rows])},
        "fer": scores(y, fer_pred) | {"faces": faces([t["faces"] for t in theirs])},
        "neutral": float((y == EMOTIONS.index("neutral")).mean()),
        "support": {c: int((y == i).sum()) for i, c in enumerate(EMOTIONS)},
        "recall": {
            side: {c: float((p[y == i] == i).mean()) for i, c in enumerate(EMOTIONS) if (y == i).any()}
            for side, p in (("ours", our_pred), ("fer", fer_pred))
        },
    }


def private_side_by_side(data: Path, checkpoint: Path, fer: FerWorker) -> dict[str, Any]:
    from training.evaluate_photos import build_server_pipeline

    faces48, labels = private_test(data)
    clf = build_server_pipeline(checkpoint, "cpu")[0].classifier  # the server's default path here
    proba = server_answers(clf, faces48).numpy()
    our_pred = np.array([EMOTIONS.index(clf.classes[i]) for i in proba.argmax(1)])
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "faces.npy"
        np.save(npy, faces48[:, 0].numpy().astype(np.uint8))
        fer_pred = np.array([EMOTIONS.index(c) for c in fer.call({"crops": str(npy)})["labels"]])
    path = f"{type(clf.model).__name__} {getattr(clf.model, 'precision', 'f32')}"
    return {"ours": scores(labels, our_pred) | {"path": path}, "fer": scores(labels, fer_pred)}


def report(photos: dict[str, Any] | None, private: dict[str, Any] | None, folder: Path, cmd: str) -> str:
    lines = [
        SECTION,
        "",
        'The answers, not the speed (that is "Versus fer (CPU)"): our server in its default configuration '
        "and the `fer` package (25.10.3, `FER()`: its Haar detector and its classifier, run by TensorFlow "
        "Lite) on the same inputs in one run.",
        "",
        "| set | items | ours: accuracy | fer: accuracy | ours: macro-F1 | fer: macro-F1 "
        "| faces 0 / 1 / 2+ ours | fer |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    if photos:
        o, f = photos["ours"], photos["fer"]
        lines.append(
            f"| real photos, whole pipeline | {o['n']:,} | **{o['accuracy']:.2%}** | {f['accuracy']:.2%} "
            f"| {o['macro_f1']:.4f} | {f['macro_f1']:.4f} | {o['faces']} | {f['faces']} |"
        )
    if private:
        o, f = private["ours"], private["fer"]
        lines.append(
            f"| FER2013 PrivateTest, classifier alone | {o['n']:,} | **{o['accuracy']:.2%}** "
            f"| {f['accuracy']:.2%} | {o['macro_f1']:.4f} | {f['macro_f1']:.4f} | - | - |"
        )
    lines.append("")
    if photos:
        rec = photos["recall"]
        lines += [
            f"Real photos: `{folder}` (labelled `<class>/<images>`; the default is realfaces-dev's held-out "
            "people, whom no model of ours was trained on). Ours scores the first face the server returns, "
            "`fer` its largest; a photo without a face counts wrong. Macro-F1 over the classes present, "
            f'"no face" counted as a wrong answer. Always answering "neutral" would score '
            f"{photos['neutral']:.2%}. Recall per class:",
            "",
            "| class | photos | ours | fer |",
            "| --- | ---: | ---: | ---: |",
            *(
                f"| {c} | {photos['support'][c]} | {rec['ours'][c]:.1%} | {rec['fer'][c]:.1%} |"
                for c in EMOTIONS
                if c in rec["ours"]
            ),
            "",
        ]
    if private:
        lines += [
            f"PrivateTest: ours on the server's classifier path here ({private['ours']['path']}) through its "
            "whole-image crop, as `POST /v1/predict?detect=false` answers a 48x48 face; `fer`'s classifier "
            "on each face prepared as its `detect_emotions` prepares one.",
            "",
        ]
    from bench_server import machine

    lines += [f"Machine: {machine()}.", "", f"Reproduce: `{cmd}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    if not args.photos.is_dir():
        raise SystemExit(
            f"{args.photos} is not a folder; make the held-out photos with `python -m training.photo_crops "
            "--data ../shared/data/realfaces-dev --out runs/rc3 --heldout-only` or pass --photos DIR"
        )
    fer = FerWorker({})
    try:
        photos = photos_side_by_side(args.photos, args.checkpoint, fer)
        private = private_side_by_side(args.data, args.checkpoint, fer) if str(args.data) else None
    finally:
        fer.close()
    cmd = ("python bench/fer_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    body = report(
        photos,
        private,
        args.photos.relative_to(REPO) if args.photos.is_relative_to(REPO) else args.photos,
        cmd,
    )
    print(body)
    if not args.no_write:
        write_section(args.out, SECTION, body)


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
