"""server.pipeline.runner: one batch of mixed jobs -> each job's own faces, limits and coordinates.

The real pipeline (SSD detector, a random-weight classifier) on real photos; the batch function is
called directly, as the batcher's worker thread calls it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from server_harness import faces_canvas, server_settings

from server.pipeline.crop import crop_whole_images
from server.pipeline.decode import DecodedImage
from server.pipeline.runner import Job, Pipeline, PredictOptions, build_pipeline

#: What a request without options gets from the default settings.
DEFAULT = PredictOptions(max_faces=10, min_confidence=0.5)


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint: Path) -> Pipeline:
    return build_pipeline(server_settings(tiny_checkpoint, backend="torch", warmup=False), "cpu")


def decoded(img: np.ndarray, size: tuple[int, int] | None = None) -> DecodedImage:
    """``img`` as decoded; ``size``: the (width, height) of the image sent, if ``img`` is a reduction."""
    return DecodedImage(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous(), 0.0, size)


def test_each_job_gets_its_own_limits_in_a_shared_batch(pipeline: Pipeline, astronaut: np.ndarray) -> None:
    canvas = decoded(faces_canvas(astronaut))  # three faces of different sizes
    everything, one, none = pipeline.run(
        [
            Job(canvas, PredictOptions(max_faces=10, min_confidence=0.5)),
            Job(canvas, PredictOptions(max_faces=1, min_confidence=0.5)),
            Job(canvas, PredictOptions(max_faces=10, min_confidence=1.01)),  # no score reaches it
        ]
    )
    assert len(everything.faces) == 3 and len(none.faces) == 0
    (kept,) = one.faces
    assert kept.box in [f.box for f in everything.faces]
    # Replies list the largest (confidence-weighted) face first.
    assert [f.rank for f in everything.faces] == sorted((f.rank for f in everything.faces), reverse=True)


def test_batching_does_not_change_a_jobs_result(pipeline: Pipeline, astronaut: np.ndarray) -> None:
    jobs = [
        Job(decoded(faces_canvas(astronaut)), DEFAULT),
        Job(decoded(astronaut), DEFAULT),
        Job(decoded(astronaut[:, ::-1]), DEFAULT),
    ]
    together = pipeline.run(jobs)
    alone = [pipeline.run([job])[0] for job in jobs]
    for a, b in zip(together, alone, strict=True):
        assert len(a.faces) == len(b.faces) >= 1
        for fa, fb in zip(a.faces, b.faces, strict=True):
            assert np.allclose(fa.box, fb.box, atol=1e-3) and np.allclose(fa.probs, fb.probs, atol=1e-5)


def test_whole_image_jobs_classify_the_image_itself(pipeline: Pipeline, astronaut: np.ndarray) -> None:
    face = np.ascontiguousarray(astronaut[40:220, 150:330])
    detect, whole = pipeline.run(
        [
            Job(decoded(astronaut), DEFAULT),
            Job(decoded(face), PredictOptions(max_faces=1, min_confidence=0.0, detect=False)),
        ]
    )
    assert len(detect.faces) == 1
    (only,) = whole.faces
    assert only.box == (0.0, 0.0, 180.0, 180.0) and only.score == 1.0
    want = pipeline.classifier.predict(
        crop_whole_images([decoded(face).tensor], pipeline.classifier.input_size)
    )
    assert np.allclose(only.probs, want[0].numpy(), atol=1e-5)


def test_boxes_come_back_in_the_pixels_of_the_image_sent(pipeline: Pipeline, astronaut: np.ndarray) -> None:
    """An image decoded reduced (DCT scaling) is detected small; its boxes are scaled back up."""
    (full,) = pipeline.run([Job(decoded(astronaut), DEFAULT)])
    half = np.ascontiguousarray(astronaut[::2, ::2])
    (reduced,) = pipeline.run([Job(decoded(half, size=(512, 512)), DEFAULT)])
    assert len(full.faces) == len(reduced.faces) == 1
    assert np.allclose(full.faces[0].box, reduced.faces[0].box, atol=12)  # a 2x coarser detection
