"""The smallest face the server's detector finds in a 640x480 frame, per SSD input size and for
``EMOTION_DETECTOR=blazeface``.

Faces are real photos (``../shared/data/realfaces-dev``, when present; else scikit-image's
astronaut) scaled so that the face box the detector finds on the full-size photo becomes
W pixels wide, pasted at a random place on a 640x480 textured background. A face counts as
found when a detection with score >= the server's threshold overlaps the pasted box with
IoU >= 0.4. Runs in process on the CPU with the server's detector builder and backend.

    python bench/smallest_face.py                           # ~1-2 min
    python bench/smallest_face.py --sizes 300x300 --faces 50 --no-write
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from docsection import write_section  # bench/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.config import Settings, parse_size  # noqa: E402
from server.pipeline.backend import Precision, compile_module, resolve_backend  # noqa: E402
from server.pipeline.detect import (  # noqa: E402
    DetectorOptions,
    SSDFaceDetector,
    build_detector,
    resolve_ssd_weights,
    ssd_int8_build,
)
from server.pipeline.types import FaceDetector  # noqa: E402

SECTION = "## Smallest face found"
REALFACES = REPO.parent / "shared" / "data" / "realfaces-dev"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--sizes",
        default="distilled,300x300,300x300@distilled,300x300:float,400x300,320x240,240x180,blazeface",
        help="detectors as the server builds them (distilled, blazeface) and the SSD alone at "
        "inputs WxH (int8 where a build ships; WxH:float without int8; WxH@distilled: the distilled SSD "
        "alone)",
    )
    p.add_argument("--widths", default="24,32,40,48,56,64,80,100,120", help="face widths in pixels")
    p.add_argument("--faces", type=int, default=80, help="photos used (each at every width)")
    p.add_argument("--backend", default="auto", help="auto, torch or openvino")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--data", type=Path, default=REALFACES)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true")
    return p


def photos(data: Path, n: int) -> tuple[list[np.ndarray], str]:
    if (data / "labels.csv").exists():
        files = sorted(data.glob("*/*.jpg"))
        rng = np.random.default_rng(0)
        pick = rng.choice(len(files), size=min(n, len(files)), replace=False)
        out = [cv2.cvtColor(cv2.imread(str(files[i])), cv2.COLOR_BGR2RGB) for i in sorted(pick)]
        return [p for p in out if p is not None], f"{data.name} ({len(out)} photos)"
    from skimage import data as skdata

    return [skdata.astronaut()], "scikit-image astronaut"


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from server.pipeline.boxes import box_iou

    return box_iou(a.view(-1, 4), b.view(-1, 4)).flatten()


def scenes(
    reference: SSDFaceDetector, faces: list[np.ndarray], widths: list[int], threshold: float
) -> dict[int, list[tuple[np.ndarray, torch.Tensor]]]:
    """Per width: (640x480 frame, pasted face box) pairs; photos with no clear face are skipped."""
    rng = np.random.default_rng(1)
    noise = rng.integers(60, 200, (480, 640, 3), dtype=np.uint8)
    background = cv2.GaussianBlur(noise, (0, 0), 3)
    out: dict[int, list[tuple[np.ndarray, torch.Tensor]]] = {w: [] for w in widths}
    for photo in faces:
        # The reference box comes from the photo on a canvas twice its size: a photo that is all
        # face (most are tight portraits) would otherwise give a box cut by the photo's edges.
        h0, w0 = photo.shape[:2]
        canvas = cv2.resize(background, (2 * w0, 2 * h0))
        canvas[h0 // 2 : h0 // 2 + h0, w0 // 2 : w0 // 2 + w0] = photo
        det = reference.detect([torch.from_numpy(canvas).permute(2, 0, 1)], min_confidence=threshold)[0]
        if len(det) != 1:
            continue
        x1, y1, x2, y2 = (det.boxes[0] - torch.tensor([w0 // 2, h0 // 2, w0 // 2, h0 // 2])).tolist()
        for w in widths:
            s = w / (x2 - x1)
            small = cv2.resize(photo, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
            h_, w_ = small.shape[:2]
            if h_ > 480 or w_ > 640:
                continue
            ox, oy = int(rng.integers(0, 640 - w_ + 1)), int(rng.integers(0, 480 - h_ + 1))
            frame = background.copy()
            frame[oy : oy + h_, ox : ox + w_] = small
            box = torch.tensor([x1 * s + ox, y1 * s + oy, x2 * s + ox, y2 * s + oy])
            out[w].append((frame, box))
    return out


def detector_at(spec: str, threshold: float, backend: str) -> FaceDetector:
    """The SSD alone at input ``WxH`` (``WxH:float``: without its int8 build; ``WxH@distilled`` or
    ``WxH@FILE``: a distilled network alone), or a detector as the server builds it: ``distilled`` (the
    distilled SSD proposes, the SSD's region pass confirms), ``blazeface``."""
    if spec == "distilled" or spec == "blazeface":
        from server.pipeline.runner import build_pipeline

        kind: Literal["distilled", "blazeface"] = "distilled" if spec == "distilled" else "blazeface"
        settings = Settings(detector=kind, score_threshold=threshold, min_face_size=1, warmup=False)
        return build_pipeline(settings, "cpu").detector
    spec, _, weights_name = spec.partition("@")
    weights = resolve_ssd_weights(weights_name or "original")
    dims, _, precision = spec.partition(":")
    width, height = parse_size(dims)
    options = DetectorOptions(score_threshold=threshold, min_face_size=1, input_size=(width, height))
    det = build_detector("ssd", options, ssd_weights=weights)
    assert isinstance(det, SSDFaceDetector)
    example = det.preprocess([torch.zeros((3, height, width), dtype=torch.uint8)])
    mode: Precision = "float" if precision == "float" else "auto"
    det.model = compile_module(
        det.model,
        example,
        backend,
        precision=mode,
        cache_dir=Settings().cache_dir,
        int8=ssd_int8_build((width, height), weights),
    )
    return det


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    sizes = args.sizes.split(",")
    faces, source = photos(args.data, args.faces)
    reference = build_detector("ssd", DetectorOptions(score_threshold=args.threshold, min_face_size=1))
    assert isinstance(reference, SSDFaceDetector)
    frames = scenes(reference, faces, widths, args.threshold)
    backend = resolve_backend(args.backend, "cpu")
    rows = []
    for size in sizes:
        det = detector_at(size, args.threshold, backend)
        rates = []
        for w in widths:
            found = 0
            for frame, box in frames[w]:
                d = det.detect([torch.from_numpy(frame).permute(2, 0, 1)])[0]
                found += int(len(d) > 0 and bool((iou(d.boxes, box) >= 0.4).any()))
            rates.append(found / max(len(frames[w]), 1))
        smallest = next((w for w, r in zip(widths, rates, strict=True) if r >= 0.5), None)
        precision = getattr(getattr(det, "model", None), "precision", "")
        rows.append((f"{size} ({precision})" if precision else size, rates, smallest))
        print(f"{size}: " + "  ".join(f"{w}px {r:.0%}" for w, r in zip(widths, rates, strict=True)))
    head = (
        "| detector input | " + " | ".join(f"{w} px" for w in widths) + " | smallest width found in >= 50% |"
    )
    lines = [head, "| --- |" + " ---: |" * (len(widths) + 1)]
    for name, rates, smallest in rows:
        cells = " | ".join(f"{r:.0%}" for r in rates)
        lines.append(f"| {name} | {cells} | {smallest if smallest else '-'} px |")
    n = len(frames[widths[0]])
    cmd = ("python bench/smallest_face.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    body = (
        f"{SECTION}\n\nShare of faces found, by face width (the detector's box on the full-size photo, "
        f"scaled) in a 640x480 frame: {n} faces from {source}, each pasted at a random place on a textured "
        f"background; found = a detection with score >= {args.threshold} and IoU >= 0.4 with the pasted "
        f"box. Backend {backend}.\n\n" + "\n".join(lines) + f"\n\nReproduce: `{cmd}`\n"
    )
    print(body)
    if not args.no_write:
        write_section(args.out, SECTION, body)


if __name__ == "__main__":
    main()
