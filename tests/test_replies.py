"""Reply assembly (server/api/replies.py): boxes, scores and timings, the same for REST and the stream."""

from __future__ import annotations

import time

import numpy as np
import pytest
from server_harness import encode

from server.api.replies import face_box, face_result, predict_response, stream_result
from server.pipeline.decode import DecodedImage, decode_image
from server.pipeline.runner import Face, JobResult
from shared.emotions import EMOTIONS
from shared.protocol import FaceBox, ModelRef

CLASSES = list(EMOTIONS)


@pytest.fixture(scope="module")
def image(astronaut: np.ndarray) -> DecodedImage:
    return decode_image(encode(astronaut[:480, :500]), max_pixels=10**7)


def probs(hot: int) -> np.ndarray:
    p = np.full(len(CLASSES), 0.05, np.float32)
    p[hot] = 1.0 - 0.05 * (len(CLASSES) - 1)
    return p


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((10.4, 20.6, 110.5, 220.49), FaceBox(x=10, y=21, w=100, h=199)),
        ((-30.0, -5.0, 40.0, 50.0), FaceBox(x=0, y=0, w=40, h=50)),  # clipped to the image
        ((450.0, 400.0, 900.0, 700.0), FaceBox(x=450, y=400, w=50, h=80)),
        ((300.0, 200.0, 290.0, 190.0), FaceBox(x=300, y=200, w=0, h=0)),  # never negative
    ],
)
def test_boxes_are_whole_pixels_inside_the_image(
    box: tuple[float, float, float, float], expected: FaceBox
) -> None:
    assert face_box(box, 500, 480) == expected


def test_a_face_reports_its_scores_or_the_ones_given(image: DecodedImage) -> None:
    face = Face(box=(10.0, 10.0, 60.0, 70.0), score=1.0000001, probs=probs(3))
    own = face_result(face, CLASSES, image)
    assert own.confidence == 1.0 and own.dominant == CLASSES[3] and own.track_id is None
    assert list(own.emotions) == CLASSES and abs(sum(own.emotions.values()) - 1.0) < 1e-6
    smoothed = face_result(face, CLASSES, image, probs(0), track_id=7)
    assert smoothed.dominant == CLASSES[0] and smoothed.track_id == 7 and smoothed.box == own.box


def test_rest_and_stream_replies_agree(image: DecodedImage) -> None:
    faces = [
        Face((100.0, 50.0, 300.0, 260.0), 0.99, probs(3)),
        Face((20.0, 30.0, 80.0, 100.0), 0.7, probs(6)),
    ]
    result = JobResult(faces, detect_ms=12.34567, classify_ms=3.21098)
    started = time.perf_counter()
    rest = predict_response(image, result, CLASSES, ModelRef(name="m", version="v"), started)
    tracks = [(1, faces[0].probs), (2, faces[1].probs)]
    stream = stream_result(5, image, result, CLASSES, tracks, dropped=2, started=started)
    assert [f.model_copy(update={"track_id": None}) for f in stream.faces] == rest.faces
    assert [f.track_id for f in stream.faces] == [1, 2] and (stream.frame, stream.dropped) == (5, 2)
    assert rest.image == stream.image and (rest.image.width, rest.image.height) == (500, 480)
    for t in (rest.timing_ms, stream.timing_ms):
        assert (t.detect, t.classify) == (12.346, 3.211) and t.decode == round(image.decode_ms, 3)
        assert t.total >= 0.0
    with pytest.raises(ValueError):  # a track for every face, no more, no fewer
        stream_result(5, image, result, CLASSES, tracks[:1], dropped=0, started=started)
