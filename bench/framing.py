"""Which crop framing turns an SSD face box into a FER2013-like face? Measured, not guessed.

FER2013 faces are 48x48 crops with their own framing; the SSD box around the same face
is tighter or looser, higher or lower. This script pastes upscaled PublicTest faces
onto larger frames, detects them with the SSD, crops each detection with a grid of
``CropSpec`` margins and vertical shifts, classifies the crops and reports:

* the detection rate (a detection whose centre lies in the pasted face);
* the framing that maps the detector box back onto the pasted FER2013 square,
  measured geometrically (independent of any classifier);
* accuracy per (margin, y_shift) over detected faces and end to end (misses count
  as wrong), next to the accuracy of the same faces classified directly at 48x48.

The best row is printed and the table is written into docs/detection.md between the
``framing`` markers. PublicTest only (it is the model-selection split).

    python bench/framing.py --limit 200                     # a quick check
    python bench/framing.py --checkpoint runs/x/best.safetensors   # full PublicTest
"""

from __future__ import annotations

import os

# Idle OpenMP threads must not spin on a shared CPU (see docs/detection.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from docsection import write_marked  # noqa: E402  (bench/ is on sys.path when run as a script)

from server.model.checkpoint import DEFAULT_CHECKPOINT, CropSpec  # noqa: E402
from server.pipeline.classify import EmotionClassifier  # noqa: E402
from server.pipeline.crop import crop_faces, crop_whole_images  # noqa: E402
from server.pipeline.detect import DetectorOptions, build_detector  # noqa: E402
from shared.emotions import EMOTIONS  # noqa: E402

DOC = REPO / "docs" / "detection.md"
START, END = "<!-- framing:start -->", "<!-- framing:end -->"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = Path(os.environ.get("FER2013_PATH", REPO.parent / "shared" / "data" / "fer2013.tar.gz"))
    p.add_argument("--data", type=Path, default=default_data, help="FER2013 (any form training.data reads)")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--limit", type=int, default=0, help="use N random PublicTest faces (0 = all)")
    p.add_argument("--margins", default="0,0.1,0.2,0.3,0.4")
    p.add_argument("--y-shifts", default="-0.1,0,0.1")
    p.add_argument("--face-size", default="160,200", help="min,max side of the pasted face (px)")
    p.add_argument("--canvas", default="640x480", help="frame size WxH")
    p.add_argument("--input-size", default="300x300", help="SSD input WxH")
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="do not update docs/detection.md")
    return p


def make_frames(
    faces: np.ndarray, rng: np.random.Generator, canvas: tuple[int, int], side_range: tuple[int, int]
) -> tuple[list[torch.Tensor], np.ndarray]:
    """Each face upscaled to a random side, pasted at a random place on a flat or noisy grey frame.

    Returns (3, H, W) uint8 frames and the (N, 4) pasted squares.
    """
    from PIL import Image

    cw, ch = canvas
    frames, rects = [], []
    for face in faces:
        side = int(rng.integers(side_range[0], side_range[1] + 1))
        big = np.asarray(Image.fromarray(face).resize((side, side), Image.Resampling.BICUBIC))
        if rng.random() < 0.5:
            bg = np.full((ch, cw), rng.integers(40, 216), np.uint8)
        else:  # smooth noise: texture without face-like structure
            small = rng.integers(0, 256, (ch // 16 + 1, cw // 16 + 1), dtype=np.uint8)
            bg = np.asarray(Image.fromarray(small).resize((cw, ch), Image.Resampling.BICUBIC))
            bg = np.array(bg)
        x, y = int(rng.integers(0, cw - side + 1)), int(rng.integers(0, ch - side + 1))
        bg[y : y + side, x : x + side] = big
        frames.append(torch.from_numpy(np.repeat(bg[None], 3, 0)))
        rects.append((x, y, x + side, y + side))
    return frames, np.asarray(rects, np.float32)


def match(boxes: torch.Tensor, rect: np.ndarray) -> int | None:
    """Index of the best-scoring box whose centre lies inside the pasted face, if any."""
    if not len(boxes):
        return None
    b = boxes.cpu().numpy()
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    inside = (cx > rect[0]) & (cx < rect[2]) & (cy > rect[1]) & (cy < rect[3])
    hits = np.flatnonzero(inside)
    return int(hits[0]) if len(hits) else None  # boxes are sorted by score


def predict(clf: EmotionClassifier, crops: torch.Tensor, chunk: int = 512) -> np.ndarray:
    names = np.array(clf.classes)
    out = [clf.predict(crops[i : i + chunk]).argmax(1).numpy() for i in range(0, len(crops), chunk)]
    return names[np.concatenate(out)] if out else np.array([], dtype=str)


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    from training.data import load_dataset

    t0 = time.perf_counter()
    ds = load_dataset(args.data).subset("public")
    rng = np.random.default_rng(args.seed)
    idx = (
        np.arange(len(ds)) if not args.limit else rng.choice(len(ds), min(args.limit, len(ds)), replace=False)
    )
    faces, truth = ds.images[idx], np.array(EMOTIONS)[ds.labels[idx]]
    cw, ch = (int(v) for v in args.canvas.split("x"))
    iw, ih = (int(v) for v in args.input_size.split("x"))
    lo, hi = (int(v) for v in args.face_size.split(","))
    frames, rects = make_frames(faces, rng, (cw, ch), (lo, hi))
    print(f"{len(frames)} PublicTest faces pasted on {cw}x{ch} frames ({time.perf_counter() - t0:.1f}s)")

    det = build_detector(
        options=DetectorOptions(input_size=(iw, ih), score_threshold=args.score_threshold), device=args.device
    )
    clf = EmotionClassifier(args.checkpoint, args.device)
    t1 = time.perf_counter()
    found: list[int] = []
    boxes: list[torch.Tensor] = []
    for start in range(0, len(frames), args.batch):
        batch = [f.to(args.device) for f in frames[start : start + args.batch]]
        for k, d in enumerate(det.detect(batch)):
            hit = match(d.boxes, rects[start + k])
            if hit is not None:
                found.append(start + k)
                boxes.append(d.boxes[hit : hit + 1].cpu())
    n, n_found = len(frames), len(found)
    print(f"detected {n_found}/{n} = {n_found / n:.1%} ({time.perf_counter() - t1:.1f}s)")

    # Geometry: the framing that maps each detector box onto its pasted FER2013 square
    # (side S): a square crop of side max(w, h) * (1 + 2 * margin), centre moved by y_shift.
    b = torch.cat(boxes).numpy() if boxes else np.zeros((0, 4), np.float32)
    r = rects[found]
    side_s = r[:, 2] - r[:, 0]
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    long_side = np.maximum(bw, bh)
    margins = (side_s / np.maximum(long_side, 1e-6) - 1) / 2
    shifts = ((r[:, 1] + r[:, 3]) / 2 - (b[:, 1] + b[:, 3]) / 2) / np.maximum(long_side, 1e-6)
    q = (25, 50, 75)
    m_q = np.percentile(margins, q) if n_found else np.full(3, np.nan)
    s_q = np.percentile(shifts, q) if n_found else np.full(3, np.nan)
    ideal_margin, ideal_shift = float(m_q[1]), float(s_q[1])
    print(
        f"box / FER square: width {np.median(bw / side_s):.3f}, "
        f"height {np.median(bh / side_s):.3f} (medians)\n"
        f"geometric framing: margin {ideal_margin:+.3f} (quartiles {m_q[0]:+.3f}..{m_q[2]:+.3f}), "
        f"y_shift {ideal_shift:+.3f} (quartiles {s_q[0]:+.3f}..{s_q[2]:+.3f})"
    )

    images = [frames[i] for i in found]
    truth_found = truth[found]
    direct = predict(clf, crop_whole_images([torch.from_numpy(f)[None] for f in faces], clf.input_size))
    direct_acc = float((direct == truth).mean())
    direct_found = float((direct[found] == truth_found).mean()) if n_found else float("nan")
    rows = []
    for margin in (float(m) for m in args.margins.split(",")):
        for shift in (float(s) for s in args.y_shifts.split(",")):
            spec = CropSpec(margin=margin, square=True, y_shift=shift)
            pred = predict(clf, crop_faces(images, boxes, spec, clf.input_size))
            correct = int((pred == truth_found).sum())
            rows.append((margin, shift, correct / max(n_found, 1), correct / n))
    best = max(rows, key=lambda r: r[2])
    print(f"\n{'margin':>6} {'y_shift':>7} {'acc(detected)':>13} {'acc(all)':>9}")
    for m, s, a, e in rows:
        print(f"{m:6.2f} {s:+7.2f} {a:13.2%} {e:9.2%}" + ("  <- best" if (m, s) == best[:2] else ""))
    print(f"direct 48x48: {direct_acc:.2%} of all, {direct_found:.2%} of the detected faces")
    print(f"best: margin {best[0]}, y_shift {best[1]}: {best[2]:.2%} of detected ({best[3]:.2%} end to end)")

    if args.no_write:
        return
    meta = clf.meta
    table = [
        "| margin | y_shift | accuracy, detected faces | accuracy, all (misses wrong) |",
        "| ---: | ---: | ---: | ---: |",
        *(
            f"| {m:.2f} | {s:+.2f} | {a:.2%}{' (best)' if (m, s) == best[:2] else ''} | {e:.2%} |"
            for m, s, a, e in rows
        ),
    ]
    body = "\n".join(
        [
            f"Run: `python bench/framing.py {' '.join(argv if argv is not None else sys.argv[1:])}`".strip(),
            "",
            f"- checkpoint: `{args.checkpoint.name}` (version {meta.version!r}, crop spec in it: "
            f"margin {meta.crop.margin}, y_shift {meta.crop.y_shift}, square {meta.crop.square})",
            f"- faces: {n} PublicTest faces, upscaled to {lo}-{hi} px, on {cw}x{ch} frames; "
            f"SSD input {iw}x{ih}, score threshold {args.score_threshold}",
            f"- detection rate: **{n_found / n:.1%}** ({n_found}/{n})",
            f"- detector box / pasted FER2013 square (medians): width {np.median(bw / side_s):.3f}, "
            f"height {np.median(bh / side_s):.3f}",
            "- geometric framing (detector box -> pasted FER2013 square, median [quartiles]): "
            f"margin **{ideal_margin:+.3f}** [{m_q[0]:+.3f}, {m_q[2]:+.3f}], "
            f"y_shift **{ideal_shift:+.3f}** [{s_q[0]:+.3f}, {s_q[2]:+.3f}]",
            f"- classified directly at 48x48: {direct_acc:.2%} of all faces, "
            f"{direct_found:.2%} of the detected ones",
            f"- best framing by accuracy: margin **{best[0]}**, y_shift **{best[1]}** "
            f"({best[2]:.2%} of detected, {best[3]:.2%} end to end)",
            "",
            *table,
        ]
    )
    write_marked(DOC, START, END, body, title="# Face detection")
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
