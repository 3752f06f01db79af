"""Where BlazeFace puts a face's box against the SSD: the ``FRAMING`` constants of
``server/pipeline/detect/blazeface.py``.

The classifier was trained on crops of the SSD's boxes (taller than BlazeFace's squares, and
lower), so BlazeFace's boxes are mapped to the SSD's framing before cropping. Per range, on
realfaces-dev photos (else scikit-image's astronaut) that the SSD finds exactly one face in:
the short-range model on the photo as it is, the back model on the photo shrunk so the face is
48-120 px wide in a 640x480 frame. Prints the medians of (centre dx, centre dy, width, height)
in units of the BlazeFace box's width, and the SSD/BlazeFace IoU before and after the mapping.

    python bench/blazeface_framing.py              # ~1 min
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.pipeline.boxes import box_iou  # noqa: E402
from server.pipeline.detect import DetectorOptions, build_detector  # noqa: E402
from server.pipeline.detect.blazeface import FRAMING, BlazeFaceDetector, to_ssd_framing  # noqa: E402

REALFACES = REPO.parent / "shared" / "data" / "realfaces-dev"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=300)
    p.add_argument("--data", type=Path, default=REALFACES)
    return p


def photo_files(data: Path, n: int) -> list[np.ndarray]:
    if not (data / "labels.csv").exists():
        from skimage import data as skdata

        return [skdata.astronaut()]
    files = sorted(data.glob("*/*.jpg"))
    pick = np.random.default_rng(7).choice(len(files), size=min(n, len(files)), replace=False)
    return [cv2.cvtColor(cv2.imread(str(files[i])), cv2.COLOR_BGR2RGB) for i in sorted(pick)]


def framing(ssd: np.ndarray, blaze: np.ndarray) -> tuple[float, float, float, float]:
    side = blaze[:, 2] - blaze[:, 0]
    dx = ((ssd[:, 0] + ssd[:, 2]) - (blaze[:, 0] + blaze[:, 2])) / 2 / side
    dy = ((ssd[:, 1] + ssd[:, 3]) - (blaze[:, 1] + blaze[:, 3])) / 2 / side
    fw = (ssd[:, 2] - ssd[:, 0]) / side
    fh = (ssd[:, 3] - ssd[:, 1]) / side
    return tuple(round(float(np.median(v)), 3) for v in (dx, dy, fw, fh))  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    ssd = build_detector("ssd", DetectorOptions(min_face_size=1))
    blaze = BlazeFaceDetector(DetectorOptions(min_face_size=1))
    rng = np.random.default_rng(0)
    pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"short": [], "long": []}
    for photo in photo_files(args.data, args.photos):
        ref = ssd.detect([torch.from_numpy(photo).permute(2, 0, 1)])[0].boxes.numpy()
        if len(ref) != 1:
            continue
        scenes = {"short": (photo, ref[0])}
        s = rng.uniform(48, 120) / (ref[0, 2] - ref[0, 0])
        small = cv2.resize(photo, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        h, w = small.shape[:2]
        if h < 480 and w < 640:
            frame = np.full((480, 640, 3), 128, np.uint8)
            ox, oy = int(rng.integers(0, 640 - w)), int(rng.integers(0, 480 - h))
            frame[oy : oy + h, ox : ox + w] = small
            scenes["long"] = (frame, ref[0] * s + np.array([ox, oy, ox, oy], np.float32))
        for name, (image, box) in scenes.items():
            found, _ = blaze._run(name, image, 0.5)
            if len(found):
                iou = box_iou(torch.from_numpy(box[None]), torch.from_numpy(found))[0]
                if float(iou.max()) > 0.2:
                    pairs[name].append((box, found[int(iou.argmax())]))
    for name, got in pairs.items():
        ref_boxes = np.stack([p[0] for p in got])
        raw = np.stack([p[1] for p in got])
        fit = framing(ref_boxes, raw)
        before = box_iou(torch.from_numpy(ref_boxes), torch.from_numpy(raw)).diagonal()
        after = box_iou(torch.from_numpy(ref_boxes), torch.from_numpy(to_ssd_framing(raw, fit))).diagonal()
        print(
            f"{name}: {len(got)} faces; FRAMING (dx, dy, w, h) = {fit} (in the code: {FRAMING[name]}); "
            f"IoU with the SSD box, median: {float(before.median()):.3f} raw, "
            f"{float(after.median()):.3f} mapped"
        )


if __name__ == "__main__":
    main()
