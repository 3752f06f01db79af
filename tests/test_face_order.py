"""Which face comes first in a reply: the largest, weighted by detector confidence (docs/protocol.md)."""

from __future__ import annotations

from pathlib import Path

import torch

from server.pipeline.classify import EmotionClassifier
from server.pipeline.decode import DecodedImage
from server.pipeline.runner import Job, Pipeline, PredictOptions
from server.pipeline.types import Detections


class FixedDetector:
    """Returns the same boxes for every image: the order is decided after detection, by the runner."""

    name = "fixed"

    def __init__(self, boxes: list[tuple[float, float, float, float]], scores: list[float]) -> None:
        order = sorted(range(len(scores)), key=lambda i: -scores[i])  # detectors sort by score
        self.boxes = torch.tensor([boxes[i] for i in order], dtype=torch.float32)
        self.scores = torch.tensor([scores[i] for i in order], dtype=torch.float32)

    def detect(
        self, images: list[torch.Tensor], min_confidence: float | None = None, max_faces: int | None = None
    ) -> list[Detections]:
        return [Detections(self.boxes.clone(), self.scores.clone()) for _ in images]


def first_boxes(tiny_checkpoint: Path, boxes: list, scores: list) -> list[tuple[float, ...]]:
    pipe = Pipeline(EmotionClassifier(tiny_checkpoint), FixedDetector(boxes, scores), "cpu")
    image = DecodedImage(torch.full((3, 480, 640), 100, dtype=torch.uint8), 0.0)
    (result,) = pipe.run([Job(image, PredictOptions(max_faces=10, min_confidence=0.5))])
    return [f.box for f in result.faces]


def test_clear_faces_come_largest_first(tiny_checkpoint: Path) -> None:
    small, big, mid = (10, 10, 90, 90), (300, 100, 500, 300), (100, 200, 250, 350)
    got = first_boxes(tiny_checkpoint, [small, big, mid], [0.999, 0.98, 0.995])
    assert got == [big, mid, small]


def test_a_doubtful_big_box_comes_after_a_clear_face(tiny_checkpoint: Path) -> None:
    doubtful = (0, 0, 200, 200)  # 40,000 px at 0.55 -> 22,000
    clear = (300, 100, 450, 250)  # 22,500 px at 0.99 -> 22,275
    much_bigger_doubt = (0, 0, 300, 300)  # 90,000 px at 0.55 -> 49,500: bigger by more than 0.99/0.55
    assert first_boxes(tiny_checkpoint, [doubtful, clear], [0.55, 0.99]) == [clear, doubtful]
    assert first_boxes(tiny_checkpoint, [much_bigger_doubt, clear], [0.55, 0.99]) == [
        much_bigger_doubt,
        clear,
    ]


def test_the_reply_schema_states_this_order() -> None:
    """The OpenAPI document (from these models) said "largest first", which the test above shows false."""
    from shared.protocol import PredictResponse, StreamResult

    for model in (PredictResponse, StreamResult):
        described = model.model_json_schema().get("description", "")
        assert "largest first" not in described, f"{model.__name__}: {described}"
    assert "confidence" in PredictResponse.model_json_schema()["description"]
