"""Training, evaluation and serving turn a face into the same classifier input, to one grey level.

Three implementations of "grey, then resize" exist for good reasons: training reads files with PIL
(``training.data.to_gray``: the bundled model and the long runs were trained on it), validation
resizes whole batches of tensors (``training.scoring.resize_faces``), and the server crops
sub-pixel regions of tensors on any device (``server.pipeline.crop``). This pins them together on
real faces: FER2013 faces (48 -> 40, the bundled model's input), realfaces-dev photos and the
astronaut, whole and as detector-style regions. PIL rounds to whole levels (twice: one pass per
axis), so one level is the tightest agreement a float path can have with it.
"""

from __future__ import annotations

import io
import random
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_paths import REALFACES
from PIL import Image
from server_harness import jpeg

from server.model.checkpoint import CropSpec
from server.pipeline.crop import crop_faces, crop_whole_images
from server.pipeline.decode import decode_image
from training.data import to_gray
from training.scoring import resize_faces

ONE_LEVEL = 1.001  # float32 rounding on top of PIL's
EXACT_BOX = CropSpec(margin=0.0, square=False, y_shift=0.0)


def server_whole(blob: bytes, size: int) -> np.ndarray:
    """What POST /v1/predict?detect=false feeds the classifier."""
    return crop_whole_images([decode_image(blob, max_pixels=10**8).tensor], size)[0, 0].numpy()


def evaluation(gray: np.ndarray, size: int) -> np.ndarray:
    return resize_faces(torch.from_numpy(gray.copy()).float()[None, None], size)[0, 0].numpy()


def assert_within_one_level(name: str, want: np.ndarray, got: np.ndarray) -> None:
    diff = np.abs(want.astype(np.float64) - got)
    assert diff.max() <= ONE_LEVEL, f"{name}: max {diff.max():.2f} grey levels apart (mean {diff.mean():.3f})"


def fer_faces(path: Path, n: int) -> Iterator[bytes]:
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                f = tar.extractfile(member)
                if f is not None:
                    yield f.read()
                    n -= 1
                    if n == 0:
                        return


def photos(astronaut: np.ndarray, n: int) -> list[bytes]:
    """The astronaut, plus ``n`` random realfaces-dev photos when they are beside the checkout."""
    out = [jpeg(astronaut)]
    if REALFACES.is_dir():
        paths = sorted(REALFACES.glob("*/*.jpg"))
        out += [p.read_bytes() for p in random.Random(0).sample(paths, min(n, len(paths)))]
    return out


@pytest.mark.dataset
def test_fer2013_faces_at_the_bundled_models_size(fer2013_path: Path) -> None:
    for blob in fer_faces(fer2013_path, 200):
        trained = to_gray(blob, 40)
        assert_within_one_level("server", trained, server_whole(blob, 40))
        assert_within_one_level("evaluation", trained, evaluation(to_gray(blob, 48), 40))


@pytest.mark.parametrize("size", [40, 48])
def test_whole_photos(astronaut: np.ndarray, size: int) -> None:
    for blob in photos(astronaut, 20):
        trained = to_gray(blob, size)
        full = np.asarray(Image.open(io.BytesIO(blob)).convert("L"))
        assert_within_one_level("server", trained, server_whole(blob, size))
        assert_within_one_level("evaluation", trained, evaluation(full, size))


@pytest.mark.parametrize("size", [40, 48])
def test_detector_style_regions(astronaut: np.ndarray, size: int) -> None:
    """Sub-pixel square regions (a third to nine tenths of the photo) inside each photo."""
    rng = np.random.default_rng(size)
    for blob in photos(astronaut, 20):
        image = Image.open(io.BytesIO(blob))
        tensor = decode_image(blob, max_pixels=10**8).tensor
        w, h = image.size
        for _ in range(3):
            side = rng.uniform(0.3, 0.9) * min(w, h)
            x, y = rng.uniform(0, w - side), rng.uniform(0, h - side)
            box = (x, y, x + side, y + side)
            trained = np.asarray(image.convert("L").resize((size, size), Image.Resampling.BILINEAR, box=box))
            got = crop_faces([tensor], [torch.tensor([box])], EXACT_BOX, size)[0, 0].numpy()
            assert_within_one_level(f"region {box}", trained, got)
