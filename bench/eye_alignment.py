"""Would levelling the eyes before cropping pay? Measured with MTCNN landmarks, not added to the server.

The only PyPI landmark source found with weights inside its wheel (no downloads at run
time) is ``facenet-pytorch`` (MTCNN: pnet/rnet/onet in ``facenet_pytorch/data``), and it
pins ``torch<2.3``, ``numpy<2``, ``Pillow<10.3``, so it cannot be installed next to this
project. For this measurement only, its wheel is unpacked (no dependencies) and imported
from that folder:

    pip download --no-deps facenet-pytorch==2.6.0 -d /tmp/fnp && cd /tmp/fnp && python -m zipfile -e *.whl .
    python bench/eye_alignment.py --facenet-dir /tmp/fnp --limit 600

For each photo with a face: the server's first face; MTCNN's eye landmarks of the face
nearest it; the image rotated about the box centre so the eye line is level; the same box
cropped from both (server framing) and classified. Prints the tilt distribution and both
accuracies.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.model.checkpoint import DEFAULT_CHECKPOINT  # noqa: E402
from server.pipeline.crop import crop_faces  # noqa: E402
from server.pipeline.decode import decode_image  # noqa: E402
from server.pipeline.runner import Job, PredictOptions  # noqa: E402
from training.evaluate_photos import build_server_pipeline, list_photos  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--facenet-dir", type=Path, required=True, help="unpacked facenet-pytorch wheel")
    p.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "realfaces-dev")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--limit", type=int, default=600)
    p.add_argument("--seed", type=int, default=2)
    args = p.parse_args(argv)
    sys.path.insert(0, str(args.facenet_dir))
    from facenet_pytorch.models.mtcnn import MTCNN

    mtcnn = MTCNN(keep_all=True, device="cpu")
    pipe, cfg = build_server_pipeline(args.checkpoint, "cpu")
    clf = pipe.classifier
    photos = [x for x in list_photos(args.photos, args.limit, args.seed) if x.label in clf.classes]
    tilts, server_ok, level_ok = [], [], []
    for photo in photos:
        img = decode_image(photo.path.read_bytes(), max_pixels=cfg.max_pixels)
        (res,) = pipe.run(
            [Job(img, PredictOptions(max_faces=cfg.max_faces, min_confidence=cfg.score_threshold))]
        )
        if not res.faces:
            continue
        rgb = img.tensor.permute(1, 2, 0).numpy()
        boxes, _, marks = mtcnn.detect(rgb, landmarks=True)
        if boxes is None:
            continue
        boxes = np.stack([np.asarray(b, float) for b in boxes])
        marks = np.stack([np.asarray(m, float) for m in marks])
        first = np.asarray(res.faces[0].box)
        centre = (first[:2] + first[2:]) / 2
        k = int(np.argmin(np.linalg.norm((boxes[:, :2] + boxes[:, 2:]) / 2 - centre, axis=1)))
        (lx, ly), (rx, ry) = marks[k][0], marks[k][1]
        tilt = float(np.degrees(np.arctan2(ry - ly, rx - lx)))
        rot = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), tilt, 1.0)
        level = cv2.warpAffine(rgb, rot, (rgb.shape[1], rgb.shape[0]), flags=cv2.INTER_LINEAR)
        box = torch.tensor([res.faces[0].box])
        crops = torch.cat(
            [
                crop_faces([img.tensor], [box], clf.meta.crop, clf.input_size),
                crop_faces([torch.from_numpy(level).permute(2, 0, 1)], [box], clf.meta.crop, clf.input_size),
            ]
        )
        pred = clf.predict(crops).argmax(1).tolist()
        y = clf.classes.index(str(photo.label))
        tilts.append(abs(tilt))
        server_ok.append(pred[0] == y)
        level_ok.append(pred[1] == y)
    a, s, lv = np.asarray(tilts), np.asarray(server_ok), np.asarray(level_ok)
    big = a > 10
    print(f"{len(a)} photos with a face and MTCNN landmarks (of {len(photos)}, seed {args.seed})")
    print(
        f"|eye-line tilt|: median {np.median(a):.1f} deg, p75 {np.percentile(a, 75):.1f}, "
        f"p90 {np.percentile(a, 90):.1f}, share > 10 deg {big.mean():.1%}"
    )
    print(f"accuracy: server crop {s.mean():.2%}, eyes levelled {lv.mean():.2%}")
    print(f"tilt > 10 deg ({big.sum()}): server {s[big].mean():.2%}, levelled {lv[big].mean():.2%}")
    print(f"only the levelled crop right: {(lv & ~s).sum()}, only the server crop right: {(s & ~lv).sum()}")


if __name__ == "__main__":
    main()
