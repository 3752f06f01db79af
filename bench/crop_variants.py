"""Is anything between the photo and the classifier biasing real faces? Crop variants, same detections.

For labelled photos (``<class>/<images>``), runs the server pipeline once per photo (as
``emotion-eval --detect``) and classifies its first face cropped several ways: the server's
crop; the crop moved/shrunk to stay inside the image (no black fill); the server's crop
standardised to FER2013's mean/std or histogram-equalised (contrast); the region resized by
OpenCV bilinear without antialiasing or PIL Lanczos (resize method); and gray as (R+G+B)/3
instead of BT.601 (colour conversion). Prints accuracy and what neutral faces are called.

    python bench/crop_variants.py --limit 600
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.model.checkpoint import DEFAULT_CHECKPOINT, CropSpec  # noqa: E402
from server.pipeline.crop import WHOLE_IMAGE, crop_faces, crop_regions  # noqa: E402
from server.pipeline.decode import decode_image  # noqa: E402
from server.pipeline.runner import Job, PredictOptions  # noqa: E402
from training.evaluate_photos import build_server_pipeline, list_photos  # noqa: E402


def fer_stats(path: Path) -> tuple[float, float]:
    """FER2013 PublicTest's pixel mean and mean per-face standard deviation."""
    from training.data import load_dataset

    faces = load_dataset(path).subset("public").images.reshape(-1, 48 * 48).astype(np.float32)
    return float(faces.mean()), float(faces.std(1).mean())


def kept_inside(region: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """The square region moved (and shrunk if it must) so that it lies inside the image."""
    x1, y1, x2, y2 = region.tolist()
    side = min(x2 - x1, w, h)
    cx = min(max((x1 + x2) / 2, side / 2), w - side / 2)
    cy = min(max((y1 + y2) / 2, side / 2), h - side / 2)
    return torch.tensor([[cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]])


def variants(
    img: torch.Tensor, box: torch.Tensor, spec: CropSpec, size: int, fer: tuple[float, float]
) -> dict[str, torch.Tensor]:
    base = crop_faces([img], [box], spec, size)
    region = crop_regions(box, spec)[0]
    h, w = img.shape[-2:]
    gray = Image.fromarray(img.permute(1, 2, 0).numpy()).convert("L")
    x1, y1, x2, y2 = (round(v) for v in region.tolist())
    patch = gray.crop((x1, y1, x2, y2))  # outside the image reads 0, as in the server's crop
    avg = img.float().mean(0, keepdim=True).expand(3, -1, -1).round().to(torch.uint8)
    m, s = base.mean(), base.std().clamp(min=1.0)
    as_u8 = base[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, np.float32))[None, None]

    return {
        "server crop (as is)": base,
        "crop kept inside the image": crop_faces([img], [kept_inside(region, w, h)], WHOLE_IMAGE, size),
        "crop standardised to FER2013 mean/std": ((base - m) / s * fer[1] + fer[0]).clamp(0, 255),
        "crop histogram-equalised": t(cv2.equalizeHist(as_u8)),
        "resize: OpenCV bilinear, no antialias": t(
            cv2.resize(np.asarray(patch), (size, size), interpolation=cv2.INTER_LINEAR)
        ),
        "resize: PIL Lanczos": t(patch.resize((size, size), Image.Resampling.LANCZOS)),
        "gray = (R+G+B)/3": crop_faces([avg], [box], spec, size),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "realfaces-dev")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--limit", type=int, default=600)
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--fer2013", type=Path, default=REPO.parent / "shared" / "data" / "fer2013.tar.gz")
    args = p.parse_args(argv)
    fer = fer_stats(args.fer2013)
    pipe, cfg = build_server_pipeline(args.checkpoint, "cpu")
    clf = pipe.classifier
    photos = [x for x in list_photos(args.photos, args.limit, args.seed) if x.label in clf.classes]
    preds: dict[str, list[int]] = {}
    truth = []
    levels: list[tuple[float, float]] = []
    for photo in photos:
        img = decode_image(photo.path.read_bytes(), max_pixels=cfg.max_pixels)
        (res,) = pipe.run(
            [Job(img, PredictOptions(max_faces=cfg.max_faces, min_confidence=cfg.score_threshold))]
        )
        if not res.faces:
            continue
        truth.append(clf.classes.index(str(photo.label)))
        box = torch.tensor([res.faces[0].box])
        crops = variants(img.tensor, box, clf.meta.crop, clf.input_size, fer)
        base = crops["server crop (as is)"]
        levels.append((float(base.mean()), float(base.std())))
        for name, crop in crops.items():
            preds.setdefault(name, []).append(int(clf.predict(crop).argmax(1)[0]))
    y = np.asarray(truth)
    neutral = y == clf.classes.index("neutral")
    print(
        f"{len(y)} photos with a face of {len(photos)} "
        f"({args.photos.name}, seed {args.seed}, {args.checkpoint.name})"
    )
    lv = np.asarray(levels)
    print(
        f"grey level mean / per-face std: FER2013 PublicTest {fer[0]:.1f} / {fer[1]:.1f}, "
        f"server crops of these photos {lv[:, 0].mean():.1f} / {lv[:, 1].mean():.1f}"
    )
    print("| crop | accuracy, first face | neutral photos called angry / sad / neutral |")
    print("| --- | ---: | ---: |")
    for name, pr in preds.items():
        pred = np.asarray(pr)
        hist = Counter(clf.classes[i] for i in pred[neutral])
        print(
            f"| {name} | {(pred == y).mean():.2%} | "
            f"{hist['angry']} / {hist['sad']} / {hist['neutral']} (of {int(neutral.sum())}) |"
        )


if __name__ == "__main__":
    main()
