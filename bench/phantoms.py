"""Phantom faces on real photos: the res10 SSD's two head layouts through the whole server pipeline.

Runs ``emotion-eval --detect``'s evaluation (training/evaluate_photos.py) on a folder of
labelled one-person photos once per SSD head layout (``deploy``: conv8_2/conv9_2 padded as
deploy.prototxt says; ``trained``: unpadded, the server's default; see docs/detection.md,
"Phantom faces") and writes faces per photo and first-face accuracy for both into
docs/detection.md between the ``phantoms`` markers.

    python bench/phantoms.py --limit 300          # a quick look
    python bench/phantoms.py                      # all of ../shared/data/realfaces-dev
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from docsection import write_marked  # noqa: E402  (bench/ is on sys.path when run as a script)

from server.model.checkpoint import DEFAULT_CHECKPOINT  # noqa: E402
from training.evaluate_photos import evaluate_photos  # noqa: E402

DOC = REPO / "docs" / "detection.md"
START, END = "<!-- phantoms:start -->", "<!-- phantoms:end -->"


def provenance(photos_dir: Path, limit: int, layout: str) -> list[str]:
    """Where the SSD's boxes above 0.5 (after NMS) come from: head layer, cell, prior overlap."""
    import numpy as np

    from server.pipeline.boxes import box_iou
    from server.pipeline.decode import decode_image
    from server.pipeline.detect import SSDFaceDetector, locate_weights
    from server.pipeline.detect.nms import select_detections
    from training.evaluate_photos import list_photos

    det = SSDFaceDetector(locate_weights(), layout=layout)
    stats: dict[int, dict[str, list[float]]] = {}
    cells: dict[int, Counter[tuple[int, int]]] = {}
    photos = list_photos(photos_dir, limit, seed=0)
    for photo in photos:
        img = decode_image(photo.path.read_bytes(), max_pixels=40_000_000).tensor
        blob = det.preprocess([img])
        with torch.inference_mode():
            _, _, sizes = det.model(blob)
            boxes, scores = det.forward_raw(blob)
        priors, _ = det.prior_boxes(sizes)
        counts = [h * w * len(spec.box_sizes) for spec, (h, w) in zip(det.prior_specs, sizes, strict=True)]
        edges = np.cumsum([0, *counts])
        for i in select_detections(boxes, scores, 0.5, det.output_spec)[0].tolist():
            layer = int(np.searchsorted(edges, i, side="right") - 1)
            cell = (i - int(edges[layer])) // len(det.prior_specs[layer].box_sizes)
            b = boxes[0, i]
            st = stats.setdefault(layer, {"iou": [], "inside": [], "photo": []})
            st["iou"].append(float(box_iou(b[None], priors[i][None])[0, 0]))
            cx, cy = float(b[0] + b[2]) / 2, float(b[1] + b[3]) / 2
            st["inside"].append(float(0 <= cx <= 1 and 0 <= cy <= 1))
            st["photo"].append(hash(photo.path))
            cells.setdefault(layer, Counter())[divmod(cell, sizes[layer][1])] += 1
    lines = [
        f"Layout `{layout}`, {len(photos)} photos: boxes above 0.5 after NMS, by the head they come from.",
        "",
        "| head | boxes | photos with one | IoU with own prior, median / share >= 0.5 "
        "| centre inside the image | most frequent cells (row, col) |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    names = ("conv4_3", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2")
    for layer, st in sorted(stats.items()):
        iou = np.asarray(st["iou"])
        top = ", ".join(f"{c}: {n}" for c, n in cells[layer].most_common(3))
        lines.append(
            f"| {names[layer]} | {len(iou)} | {len(set(st['photo']))} | {np.median(iou):.2f} / "
            f"{(iou >= 0.5).mean():.0%} | {np.mean(st['inside']):.0%} | {top} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "realfaces-dev")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--layouts", default="deploy,trained", help="SSD head layouts to compare")
    p.add_argument(
        "--provenance",
        type=int,
        default=0,
        metavar="N",
        help="instead: which heads the boxes of N photos come from",
    )
    args = p.parse_args(argv)
    if args.provenance:
        for layout in ("deploy", "trained"):
            print("\n".join(provenance(args.photos, args.provenance, layout)), "\n")
        return
    rows = []
    for layout in args.layouts.split(","):
        t0 = time.perf_counter()
        m = evaluate_photos(
            args.photos, args.checkpoint, args.device, limit=args.limit, detector_layout=layout
        )
        n, f = m["n_photos"], m["faces_per_photo"]
        rows.append(
            f"| {layout} | {n} | {f['1'] / n:.1%} ({f['1']}) | {f['0'] / n:.1%} ({f['0']}) | "
            f"{f['2+'] / n:.1%} ({f['2+']}) | {m['accuracy_photos']:.2%} | {m['accuracy_first_face']:.2%} |"
        )
        neutral = m["predicted_histogram_by_true"].get("neutral", {})
        print(rows[-1], f"({time.perf_counter() - t0:.0f} s)")
        print(
            f"  {layout}: true-neutral photos predicted as", ", ".join(f"{k} {v}" for k, v in neutral.items())
        )
    if args.no_write:
        return
    cmd = " ".join(["python bench/phantoms.py", *(argv if argv is not None else sys.argv[1:])])
    body = [
        f"Run: `{cmd}` (checkpoint `{args.checkpoint.name}`, photos `{args.photos.name}`).",
        "",
        "| SSD head layout | photos | exactly one face | none | two or more | accuracy, all photos "
        "| accuracy, first face |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
    ]
    write_marked(DOC, START, END, "\n".join(body), title="# Face detection")
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
