"""Shared fixtures: real images (scikit-image photos) and a tiny random checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dataset_paths import FER2013, REALFACES


@pytest.fixture(scope="session")
def fer2013_path() -> Path:
    if not FER2013.exists():
        pytest.skip(f"FER2013 not found at {FER2013}")
    return FER2013


@pytest.fixture(scope="session")
def realfaces_path() -> Path:
    if not REALFACES.is_dir():
        pytest.skip(f"realfaces-dev not found at {REALFACES}")
    return REALFACES


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """512x512 RGB photo with one frontal face (scikit-image, bundled)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="session")
def astronaut_jpeg(astronaut: np.ndarray) -> bytes:
    from server_harness import jpeg

    return jpeg(astronaut, quality=90)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised but valid 7-class checkpoint, for tests that must not depend on training."""
    import torch

    from server.model.checkpoint import CheckpointMeta, save_checkpoint
    from server.model.resnet import build_resnet18
    from shared.emotions import EMOTIONS

    torch.manual_seed(0)
    meta = CheckpointMeta(classes=list(EMOTIONS), stem="s2", version="test")
    model = build_resnet18(len(EMOTIONS), 1, "s2")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, model, meta, dtype=torch.float32)
    return path
