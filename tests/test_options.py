"""Request options (server/api/options.py): defaults and cap from the settings, for REST and stream alike."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import ValidationError
from server_harness import LiveServer, faces_canvas, jpeg, recv_json, run, server_settings
from websockets.asyncio.client import connect

from server.api.options import default_options, resolve_options
from server.config import Settings
from server.pipeline.runner import PredictOptions
from shared.protocol import FaceOptions, StreamControl

SETTINGS = Settings(max_faces=3, score_threshold=0.7)


def test_defaults_are_the_settings() -> None:
    expected = PredictOptions(max_faces=3, min_confidence=0.7, detect=True)
    assert default_options(SETTINGS) == expected
    assert resolve_options(SETTINGS, FaceOptions()) == expected
    other = Settings(max_faces=7, score_threshold=0.2)
    assert default_options(other) == PredictOptions(max_faces=7, min_confidence=0.2, detect=True)


def test_a_request_sets_what_it_names_and_max_faces_is_capped() -> None:
    assert resolve_options(SETTINGS, FaceOptions(max_faces=2)).max_faces == 2
    assert resolve_options(SETTINGS, FaceOptions(max_faces=100)).max_faces == 3  # the settings cap it
    assert resolve_options(SETTINGS, FaceOptions(min_confidence=0.0)).min_confidence == 0.0  # 0 is a value
    assert resolve_options(SETTINGS, FaceOptions(detect=False)) == PredictOptions(3, 0.7, detect=False)


def test_a_stream_keeps_what_earlier_control_messages_set() -> None:
    options = default_options(SETTINGS)
    options = resolve_options(SETTINGS, StreamControl(max_faces=1, detect=False), options)
    options = resolve_options(SETTINGS, StreamControl(min_confidence=0.9), options)
    assert options == PredictOptions(max_faces=1, min_confidence=0.9, detect=False)
    assert resolve_options(SETTINGS, StreamControl(smoothing=0.5), options) == options  # no face option named
    assert resolve_options(SETTINGS, StreamControl(max_faces=50), options).max_faces == 3


@pytest.mark.parametrize("bad", [{"max_faces": 0}, {"max_faces": 101}, {"min_confidence": 1.5}])
def test_both_surfaces_share_the_bounds(bad: dict[str, Any]) -> None:
    for model in (FaceOptions, StreamControl):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            model.model_validate(bad)


@pytest.mark.parametrize("value", ["nan", "inf", float("nan")])
def test_nan_is_not_a_confidence(value: object) -> None:
    """`?min_confidence=nan` says "finite number", not "should be less than or equal to 1"."""
    for model in (FaceOptions, StreamControl):
        with pytest.raises(ValidationError, match="finite number"):
            model.model_validate({"min_confidence": value})
    with pytest.raises(ValidationError, match="finite number"):
        StreamControl.model_validate({"smoothing": value})


def test_only_the_stream_control_is_strict() -> None:
    """A typo in a control message is an error; unknown query parameters on REST stay ignored."""
    assert FaceOptions.model_validate({"max_face": 2}) == FaceOptions()
    with pytest.raises(ValidationError, match="max_face"):
        StreamControl.model_validate({"max_face": 2})


# ----------------------------------------------------------------------------- on a real server


@pytest.fixture(scope="module")
def srv(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    # Whole-frame detection on every stream frame: boxes are compared with REST's for the same frame
    # (region passes, the default, find the same faces with boxes at IoU ~0.9: test_stream_roi.py).
    server = LiveServer(
        server_settings(tiny_checkpoint, max_faces=2, stream_max_fps=1000.0, stream_redetect_every=1)
    ).start()
    yield server
    server.stop()


def test_rest_and_stream_resolve_the_same_way(srv: LiveServer, astronaut: np.ndarray) -> None:
    """Three faces on a server capped at two: both surfaces report the same faces for the same asks."""
    scene = jpeg(faces_canvas(astronaut))
    asks: list[dict[str, Any]] = [{}, {"max_faces": 50}, {"max_faces": 1}, {"detect": False}]

    def boxes(faces: list[dict[str, Any]]) -> list[dict[str, int]]:
        return [f["box"] for f in faces]

    rest = [
        boxes(httpx.post(srv.url + "/v1/predict", content=scene, params=ask, timeout=30).json()["faces"])
        for ask in asks
    ]

    async def main() -> list[list[dict[str, int]]]:
        out = []
        async with connect(srv.ws_url) as ws:
            for ask in asks:  # each control message changes only what it names, so undo the last one
                await ws.send(json.dumps({"max_faces": 100, "detect": True} | ask))
                await ws.send(scene)
                out.append(boxes((await recv_json(ws))["faces"]))
        return out

    assert run(main()) == rest
    capped, asked_too_many, one, whole = rest
    assert len(capped) == 2 and asked_too_many == capped and len(one) == 1 and one[0] in capped
    assert len(whole) == 1 and whole != one
