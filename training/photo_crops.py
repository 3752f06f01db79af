"""Labelled photos -> face crops as the server makes them, split by person, for training.

FER2013 faces are not what the server sees: it detects faces in colour photos and webcam
frames and crops them with the checkpoint's framing. Training on some crops made by the
server's own detector and crop code closes that gap; scoring fairly then needs the people
trained on kept out of the evaluation (a photo set with two photos of one person would
otherwise score the model on a face it has memorised).

``python -m training.photo_crops --data PHOTOS --out DIR`` writes

* ``DIR/crops/train/<class>/Training_<photo>.png``: crops of the training people
  (``Training_<detector>-<photo>.png`` with ``--detectors ssd,blazeface``: one per detector);
* ``DIR/crops/test/<class>/PublicTest_<photo>.png``: crops of the held-out people, which
  :func:`training.data.load_dataset` reads as a ``public`` (validation) split
  (``emotion-train --extra-train DIR/crops``);
* ``DIR/heldout/<class>/<photo>``: links to all the held-out people's original photos (those the
  detector finds no face in too: the evaluation counts them wrong), for the whole-pipeline
  evaluation ``emotion-eval --detect --data DIR/heldout``;
* ``DIR/manifest.json``: counts, the split rule and the settings used.

``--heldout-only`` writes just ``DIR/heldout`` (no model is loaded, nothing is decoded: seconds),
for scoring a checkpoint on the held-out people without making crops.

The person is the file name without its trailing ``_<digits>`` (``Aaron_Eckhart_0001.jpg``
-> ``Aaron_Eckhart``); the split is a hash of it, so it is the same on every machine and
does not move when photos are added.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from server.config import Settings
from server.model.checkpoint import CropSpec
from server.pipeline.crop import crop_faces
from server.pipeline.detect.options import detector_input
from server.pipeline.runner import Pipeline
from training.evaluate_photos import Photo, build_server_pipeline, decoded_batches, list_photos

_TRAILING_NUMBER = re.compile(r"_\d+$")


def person_of(photo: Path) -> str:
    """The person a photo shows, by the dataset's naming rule ``<person>_<digits>.<ext>``."""
    return _TRAILING_NUMBER.sub("", photo.stem)


def is_heldout(person: str, fraction: float, salt: str = "") -> bool:
    """Deterministic per-person split: the same person always lands on the same side."""
    digest = hashlib.sha256(f"{salt}{person}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def make_crops(
    data: str | Path,
    out: str | Path,
    checkpoint: str | Path,
    heldout_fraction: float = 0.5,
    salt: str = "",
    size: int = 48,
    crop: CropSpec | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    detectors: Sequence[str] = (),
) -> dict[str, object]:
    """Write the crops, links and manifest described in the module docstring; returns the manifest.

    The crop is the server's: its detector and settings (``EMOTION_*`` variables apply), the
    first face in its order, ``crop`` framing (the checkpoint's when None) at ``size`` pixels.
    With ``detectors`` (``EMOTION_DETECTOR`` values), one crop per photo and detector, named
    ``<detector>-...``: a classifier trained on them sees every framing the server can give it.
    Photos without a face, or of a class the model does not know, are counted and skipped.
    """
    out = Path(out)
    photos = [p for p in list_photos(data) if p.label is not None]
    counts: Counter[str] = Counter()
    persons: dict[str, set[str]] = {"train": set(), "heldout": set()}
    names: dict[str, object] = {}
    runs: list[str | None] = [*detectors] or [None]
    for n, detector in enumerate(runs):
        pipeline, cfg = build_server_pipeline(checkpoint, device, detector=detector)
        spec = crop or pipeline.classifier.meta.crop
        prefix = f"{detector}-" if detectors else ""
        split = (heldout_fraction, salt)
        first = n == 0  # photos are counted (undecodable, held out) in the first pass only
        _crop_all(pipeline, cfg, photos, out, spec, size, batch_size, prefix, split, counts, persons, first)
        names[prefix.rstrip("-") or "server"] = {
            "name": pipeline.detector.name,
            "input_size": detector_input(pipeline.detector.name, cfg.detector_input_size),
        }
    manifest: dict[str, object] = {
        "data": str(data),
        "checkpoint": str(checkpoint),
        "crop": spec.model_dump(),
        "size": size,
        "heldout_fraction": heldout_fraction,
        "salt": salt,
        "persons": {k: len(v) for k, v in persons.items()},
        "persons_in_both": len(persons["train"] & persons["heldout"]),
        "counts": dict(sorted(counts.items())),
        "detectors": names,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _crop_all(
    pipeline: Pipeline,
    cfg: Settings,
    photos: Sequence[Photo],
    out: Path,
    spec: CropSpec,
    size: int,
    batch_size: int,
    prefix: str,
    split: tuple[float, str],
    counts: Counter[str],
    persons: dict[str, set[str]],
    first: bool = True,
) -> None:
    """One detector's crops of every photo (and the held-out links), counted into ``counts``;
    ``first`` also counts the photos themselves, once however many detectors pass over them."""
    from tqdm import tqdm

    from server.api.options import default_options
    from server.pipeline.runner import Job, work_size

    options = default_options(cfg)  # what POST /v1/predict uses when a request sets no limits
    tag = prefix.rstrip("-")
    bar = tqdm(total=len(photos), unit="photo", desc=f"crops {tag}".strip())
    for batch in decoded_batches(photos, batch_size, cfg.max_pixels, threads=2, work=work_size(cfg)):
        bar.update(len(batch))
        good = [(p, img) for p, img in batch if img is not None]
        if first:
            counts["undecodable"] += len(batch) - len(good)
        results = pipeline.run([Job(img, options) for _, img in good]) if good else []
        for (photo, img), result in zip(good, results, strict=True):
            person = person_of(photo.path)
            heldout = is_heldout(person, *split)
            side = "heldout" if heldout else "train"
            persons[side].add(person)
            if heldout:
                # every held-out photo, face found or not: the evaluation counts a miss wrong
                _link_heldout(out, photo)
                if first:
                    counts[f"heldout_photos/{photo.label}"] += 1
            if not result.faces:
                counts[f"{prefix}no_face"] += 1
                continue
            sx, sy = img.scale  # the face box is in the photo's pixels, the tensor may be reduced
            x1, y1, x2, y2 = result.faces[0].box
            box = torch.tensor([[x1 / sx, y1 / sy, x2 / sx, y2 / sy]])
            face = crop_faces([img.tensor], [box], spec, size)[0, 0]
            _write_crop(out, photo, face.round().clamp(0, 255).to(torch.uint8).numpy(), heldout, prefix)
            counts[f"{prefix}{side}/{photo.label}"] += 1
    bar.close()


def _write_crop(out: Path, photo: Photo, face: np.ndarray, heldout: bool, tag: str = "") -> None:
    folder, prefix = ("test", "PublicTest_") if heldout else ("train", "Training_")
    target = out / "crops" / folder / str(photo.label) / f"{prefix}{tag}{photo.path.stem}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(face, mode="L").save(target)


def _link_heldout(out: Path, photo: Photo) -> None:
    """The original photo, for the whole-pipeline evaluation of held-out people (once: another
    detector's pass, or an earlier run into the same folder, may have linked it)."""
    link = out / "heldout" / photo.folder / photo.path.name
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        os.symlink(photo.path.resolve(), link)


def link_heldout(data: str | Path, out: str | Path, heldout_fraction: float = 0.5, salt: str = "") -> int:
    """``out/heldout``: links to every photo of a model class whose person is held out; how many.
    The same people as :func:`make_crops`; photos that do not decode are linked too (the full run
    drops them; realfaces-dev has none)."""
    photos = [p for p in list_photos(data) if p.label is not None]
    held = [p for p in photos if is_heldout(person_of(p.path), heldout_fraction, salt)]
    for photo in held:
        _link_heldout(Path(out), photo)
    return len(held)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder of <class>/<photos>")
    p.add_argument("--out", required=True, help="output folder (keep it out of git)")
    p.add_argument("--checkpoint", default="server/checkpoints/emotion-resnet18.safetensors")
    p.add_argument("--heldout-fraction", type=float, default=0.5)
    p.add_argument("--salt", default="", help="changes which people are held out")
    p.add_argument("--size", type=int, default=48, help="crop side in pixels (the model's input size)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--detectors",
        default="",
        help="comma-separated EMOTION_DETECTOR values, one crop per photo and detector "
        "(e.g. ssd,blazeface); default: the server's detector",
    )
    p.add_argument(
        "--heldout-only",
        action="store_true",
        help="only link the held-out people's photos into OUT/heldout (no crops, no model; seconds)",
    )
    args = p.parse_args(argv)
    if args.heldout_only:
        n = link_heldout(args.data, args.out, args.heldout_fraction, args.salt)
        print(f"{n} held-out photos linked under {Path(args.out) / 'heldout'}")
        return
    detectors = [d for d in args.detectors.split(",") if d]
    manifest = make_crops(
        args.data,
        args.out,
        args.checkpoint,
        args.heldout_fraction,
        args.salt,
        args.size,
        device=args.device,
        detectors=detectors,
    )
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
