"""server.pipeline.boxes against torchvision's box_iou / nms, which it replaces in the
server so that the server process never imports torchvision (its import costs ~165 MiB of RSS)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision.ops as tv

from server.pipeline import boxes

REPO = Path(__file__).resolve().parent.parent


def random_boxes(n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand((n, 2), generator=g) * scale
    wh = torch.rand((n, 2), generator=g) * scale * 0.3
    return torch.cat([xy, xy + wh], 1)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("scale", [1.0, 640.0])  # normalised (the SSD's) and pixel boxes (regions')
def test_same_overlaps_and_survivors_as_torchvision(seed: int, scale: float) -> None:
    b = random_boxes(300, seed, scale)
    b[:5] = b[5:10]  # identical boxes
    b[10, 2:] = b[10, :2]  # an empty one
    scores = torch.rand(300, generator=torch.Generator().manual_seed(seed + 100))
    ours, theirs = boxes.box_iou(b[:40], b), tv.box_iou(b[:40], b)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)  # the empty box: 0 / 0
    for threshold in (0.3, 0.45, 0.7):
        assert torch.equal(boxes.nms(b, scores, threshold), tv.nms(b, scores, threshold))


def test_empty_input() -> None:
    empty = torch.zeros((0, 4))
    assert boxes.nms(empty, torch.zeros(0), 0.5).numel() == 0


def test_the_server_never_imports_torchvision() -> None:
    """Building the pipeline and answering an image leaves torchvision (and the torch._dynamo and
    triton it loads) unimported."""
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        from server.app import create_app
        from server.config import Settings
        from server.pipeline.decode import DecodedImage
        from server.pipeline.runner import Job, PredictOptions, build_pipeline
        import torch

        create_app(Settings())
        pipe = build_pipeline(Settings(backend="torch"), "cpu")
        image = torch.from_numpy(np.full((3, 240, 320), 128, np.uint8))
        pipe.run([Job(DecodedImage(image, 0.0), PredictOptions(max_faces=4, min_confidence=0.0))])
        print(sorted(m for m in ("torchvision", "torch._dynamo", "triton") if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
