"""Issue 12.2: replies are forward compatible (unknown fields ignored), requests stay strict."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from shared.protocol import ErrorBody, PredictResponse, StreamControl, StreamResult

FACE = {
    "box": {"x": 1, "y": 2, "w": 3, "h": 4, "angle": 0.0},
    "confidence": 0.9,
    "emotions": {"happy": 0.8, "neutral": 0.2},
    "dominant": "happy",
    "landmarks": [[1, 2]],
}
IMAGE = {"width": 640, "height": 480, "channels": 3}
TIMING = {"decode": 1.0, "detect": 2.0, "classify": 3.0, "total": 6.0, "queue": 0.5}


def test_predict_reply_with_new_fields_parses() -> None:
    reply = {
        "faces": [FACE],
        "image": IMAGE,
        "model": {"name": "m", "version": "v", "sha": "x"},
        "timing_ms": TIMING,
        "request_id": "abc",
    }
    parsed = PredictResponse.model_validate_json(json.dumps(reply))
    assert parsed.faces[0].dominant == "happy"
    assert parsed.faces[0].box.w == 3
    assert "request_id" not in parsed.model_dump()


def test_stream_and_error_replies_with_new_fields_parse() -> None:
    msg = {"type": "result", "frame": 3, "faces": [FACE], "image": IMAGE, "timing_ms": TIMING, "dropped": 0}
    assert StreamResult.model_validate({**msg, "server_ts": 1.5}).frame == 3
    err = ErrorBody.model_validate({"error": {"code": "x", "message": "y", "retry_after": 2}, "trace": "t"})
    assert err.error.code == "x"


def test_client_transport_reads_a_newer_servers_stream_reply() -> None:
    from client.transport import parse_stream_message

    msg = {"type": "result", "frame": 0, "faces": [], "image": IMAGE, "timing_ms": TIMING, "dropped": 0}
    parsed = parse_stream_message(json.dumps({**msg, "new_field": {"nested": True}}))
    assert isinstance(parsed, StreamResult)


def test_requests_stay_strict() -> None:
    assert StreamControl.model_validate({"smoothing": 0.5}).smoothing == 0.5
    with pytest.raises(ValidationError, match="smoothin"):
        StreamControl.model_validate({"smoothin": 0.5})
