"""Tiny FER2013-layout trees whose classes a network tells apart in one epoch, for training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def fer_tree(
    root: Path,
    counts: dict[str, int],
    n_public: int = 6,
    n_private: int = 6,
    seed: int = 0,
    step: int = 60,
    stripe: int = 8,
) -> Path:
    """``train/<class>/Training_*.jpg`` (``counts[class]`` each) and ``test/<class>/{PublicTest,
    PrivateTest}_*.jpg``; class ``k`` is brighter by ``k * step`` and has a white stripe at ``k * stripe``."""
    rng = np.random.default_rng(seed)
    for k, cls in enumerate(counts):
        for split, prefix, n in (
            ("train", "Training", counts[cls]),
            ("test", "PublicTest", n_public),
            ("test", "PrivateTest", n_private),
        ):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, step, (48, 48)) + step * k
                img[:, k * stripe : k * stripe + stripe - 2] = 255
                Image.fromarray(img.astype(np.uint8)).save(d / f"{prefix}_{k}_{i}.jpg")
    return root
