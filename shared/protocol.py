"""Pydantic models for everything that crosses the wire.

Both the server (to build responses) and the clients (to validate them) import
these, so a field renamed here breaks both sides at once instead of silently.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Reply(BaseModel):
    """Server -> client: unknown fields are ignored, so a newer server can add one without
    breaking clients already installed (they validate every reply with these models).

    The server sends every field, defaults and nulls included, so the schema of a reply (its
    serialization schema: OpenAPI's) lists them all as required, a field with a default too; a
    client generated from /openapi.json then does not type ``timing_ms.total`` as optional.
    Validating a reply still accepts a field left out (the default fills it)."""

    model_config = ConfigDict(extra="ignore", json_schema_serialization_defaults_required=True)


class _Request(BaseModel):
    """Client -> server: strict, so a typo in a field name is an error instead of a silent no-op."""

    model_config = ConfigDict(extra="forbid")


class FaceBox(_Reply):
    """Face rectangle in pixels of the (EXIF-upright) input image."""

    x: int = Field(ge=0)
    y: int = Field(ge=0)
    w: int = Field(ge=0)
    h: int = Field(ge=0)


class FaceResult(_Reply):
    box: FaceBox
    confidence: float = Field(ge=0.0, le=1.0, description="Detector score (1.0 when detection is skipped).")
    emotions: dict[str, float] = Field(description="Class name -> probability; sums to 1.")
    dominant: str
    track_id: int | None = Field(default=None, description="Stable id across frames of one stream.")


class ImageInfo(_Reply):
    width: int
    height: int


class ModelRef(_Reply):
    name: str
    version: str


class Timing(_Reply):
    decode: float = 0.0
    detect: float = 0.0
    classify: float = 0.0
    total: float = 0.0


class PredictResponse(_Reply):
    """Reply to `POST /v1/predict`; faces by box area times detector confidence, highest first
    (a clear face before a bigger doubtful one; docs/protocol.md, "Face order")."""

    faces: list[FaceResult]
    image: ImageInfo
    model: ModelRef
    timing_ms: Timing


class StreamResult(_Reply):
    """One JSON text message on `WS /v1/stream`, for one processed frame."""

    type: Literal["result"] = "result"
    frame: int = Field(ge=0, description="Index of the frame in this connection, from 0.")
    faces: list[FaceResult]
    image: ImageInfo
    timing_ms: Timing
    dropped: int = Field(ge=0, description="Frames skipped since the previous reply.")


class FaceOptions(BaseModel):
    """Which faces a reply reports: the query of `POST /v1/predict` and the fields of a
    `StreamControl`. A field left out keeps the server's value (`EMOTION_MAX_FACES`, which
    also caps `max_faces`; `EMOTION_SCORE_THRESHOLD`; `detect` true), or on a stream the
    value its last control message set."""

    max_faces: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="At most this many faces (the most confident); default and cap: EMOTION_MAX_FACES.",
    )
    min_confidence: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="Minimum detector score; default: EMOTION_SCORE_THRESHOLD.",
    )
    detect: bool | None = Field(
        default=None, description="false: the whole image is one face (already cropped); default true."
    )


class StreamControl(_Request, FaceOptions):
    """Optional JSON text message a stream client may send at any time; only the fields present change."""

    smoothing: float | None = Field(
        default=None, ge=0.0, lt=1.0, allow_inf_nan=False, description="EMA factor for per-track scores."
    )


class ErrorDetail(_Reply):
    code: str
    message: str


class ErrorBody(_Reply):
    """Every 4xx/5xx body, and the payload of error messages on the WebSocket."""

    error: ErrorDetail
