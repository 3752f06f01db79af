"""``POST /v1/predict`` (one image, every face) and ``GET /v1/info``.

The body is read with the size limit enforced chunk by chunk, so an oversized
upload costs at most the limit in memory, never the whole upload, and with a
deadline for the whole body, so a client trickling bytes (slowloris) cannot hold
a request open for longer than ``EMOTION_BODY_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from server.api.docs import INVALID_HOST, UNAUTHORIZED, error_responses
from server.api.options import resolve_options
from server.api.replies import predict_response
from server.deps import ApiKey, ReadyRuntimeDep, RuntimeDep
from server.errors import (
    BadRequest,
    InvalidParameters,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from server.pipeline.runner import Job
from shared.protocol import FaceOptions, PredictResponse

router = APIRouter(prefix="/v1", tags=["predict"], dependencies=[ApiKey])
T = TypeVar("T")

#: Raw image bodies, as documented; the format is sniffed from the bytes whatever the type says.
RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "application/octet-stream")
#: Also taken: no type at all, and the common misspelling.
RAW_TYPES = frozenset({"", "image/jpg", *RAW_IMAGE_TYPES})
#: Multipart framing (boundaries, part headers) may add this much on top of the image limit.
MULTIPART_OVERHEAD = 64 * 1024
IMAGE_FIELDS = ("image", "file")  # "image" is the documented name; "file" is accepted for curl habits

ERROR_RESPONSES = error_responses(
    {
        "invalid_image": "a corrupt or truncated image (starts like a JPEG, PNG or WebP; does not decode)",
        "bad_request": "an empty body, malformed multipart, or a form with more than one image",
        "client_disconnected": "the client hung up mid-upload or before its reply (nobody reads this)",
        "invalid_host": INVALID_HOST,
        "unauthorized": UNAUTHORIZED,
        "request_timeout": "the request's head or body did not arrive within its timeout",
        "payload_too_large": "body over EMOTION_MAX_BODY_BYTES",
        "image_too_large": "more pixels than EMOTION_MAX_PIXELS",
        "image_too_complex": "a progressive JPEG with more scans than its size allows",
        "unsupported_media_type": "a Content-Type other than those of the request body, or bytes that are "
        "not a JPEG, PNG or WebP image",
        "invalid_parameters": "bad query parameters, or a multipart body without an 'image' file",
        "invalid_image_shape": "an aspect ratio over 50:1, which holds no face",
        "not_ready": "the model is still loading",
        "load_failed": "the model failed to load (waiting does not help; the reason is in the server log)",
        "overloaded": "the model's queue is full",
        "shutting_down": "the server is stopping",
    }
)
#: ``GET /v1/info``'s errors (beside :data:`server.api.docs.ANY_REQUEST`).
INFO_RESPONSES = error_responses({"invalid_host": INVALID_HOST, "unauthorized": UNAUTHORIZED})


_BINARY = {"schema": {"type": "string", "format": "binary"}}
#: The body is read by hand (size limit, deadline), so FastAPI cannot infer it; this documents it.
PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The image bytes (format sniffed from the bytes), or a form with the file in 'image'.",
        "content": {
            **{ctype: _BINARY for ctype in RAW_IMAGE_TYPES},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary"}},
                    "required": ["image"],
                }
            },
        },
    }
}


class _InfoReply(BaseModel):
    """``/v1/info`` sends every field, nulls included: the schema says so (see ``shared.protocol._Reply``)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class ModelInfo(_InfoReply):
    name: str
    version: str
    arch: str
    stem: str
    input_size: int
    crop: dict[str, Any]
    metrics: dict[str, Any]
    data_fingerprint: str
    precision: str | None = Field(
        default=None,
        description="What the classifier computes in (int8, bf16, f32, float32...); null until ready.",
    )


class DetectorInfo(_InfoReply):
    kind: str
    input_size: str = Field(
        description="Network input, WxH (blazeface: its two networks, WxH+WxH; haar: the image)."
    )
    score_threshold: float
    min_face_size: int
    max_faces: int
    precision: str | None = Field(
        default=None,
        description="What the SSD's whole-image pass computes in (int8, bf16, f32, float32, ...); null until "
        "ready and for the other detectors.",
    )


class InfoResponse(_InfoReply):
    ready: bool
    classes: list[str]
    model: ModelInfo
    detector: DetectorInfo
    device: str
    backend: str = Field(description="Model runtime: torch or openvino (CPU).")
    flip_tta: bool = Field(description="Whether each face is also classified mirrored and averaged.")
    prior_shift: dict[str, float] = Field(
        description="Per-class log multipliers applied to every face's scores (the checkpoint's prior shift; "
        "{} when it has none or EMOTION_PRIOR_SHIFT=false)."
    )
    limits: dict[str, float | int]
    auth: bool


async def _bounded(request: Request, limit: int, timeout: float) -> AsyncGenerator[bytes, None]:
    """The request body, failing with 413 as soon as it exceeds ``limit`` bytes and with 408 if
    all of it has not arrived ``timeout`` seconds after the reading started."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {limit} bytes")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    chunks = request.stream()
    seen = 0
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(anext(chunks), max(deadline - loop.time(), 0.0))
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise RequestTimeout(f"the body did not arrive within {timeout:g} s") from None
            seen += len(chunk)
            if seen > limit:
                raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
            if chunk:
                yield chunk
    finally:
        await chunks.aclose()


async def read_image_bytes(request: Request, limit: int, timeout: float) -> bytes:
    """Raw image body or the ``image`` field of a multipart form, at most ``limit`` bytes."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        body = _bounded(request, limit + MULTIPART_OVERHEAD, timeout)
        parser = MultiPartParser(request.headers, body, max_files=2, max_fields=16)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise BadRequest(f"malformed multipart body: {exc.message}") from exc
        try:
            field = next((f for f in IMAGE_FIELDS if f in form), None)
            sent = form.getlist(field) if field else []
            if len(sent) > 1:  # which one would the reply be about?
                raise BadRequest(f"one image per request: the form has {len(sent)} parts named {field!r}")
            upload = sent[0] if sent else None
            if not isinstance(upload, UploadFile):
                raise InvalidParameters("multipart body needs a file field named 'image'")
            data = await upload.read()
        finally:
            await form.close()
    elif ctype in RAW_TYPES:
        data = b"".join([chunk async for chunk in _bounded(request, limit, timeout)])
    else:
        raise UnsupportedMediaType(
            f"content type {ctype!r} not supported: send image/jpeg, image/png, image/webp, "
            "application/octet-stream, or multipart/form-data with an 'image' field"
        )
    if len(data) > limit:
        raise PayloadTooLarge(f"image of {len(data)} bytes exceeds the limit of {limit} bytes")
    if not data:
        raise BadRequest("empty body: no image")
    return data


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (the body has been read: nothing else can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """``work``, cancelled if the client hangs up first: a decode still queued for the thread
    pool is never started and an image still waiting for a batch leaves it (one already being
    decoded or inferred finishes; neither can be interrupted)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not task.done():
        task.cancel()
        raise ClientDisconnect()
    return task.result()


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=ERROR_RESPONSES,
    summary="Faces and emotions in one image",
    openapi_extra=PREDICT_BODY,
)
async def predict(
    request: Request, runtime: ReadyRuntimeDep, query: Annotated[FaceOptions, Query()]
) -> Response:
    start = time.perf_counter()
    settings = runtime.settings
    data = await read_image_bytes(request, settings.max_body_bytes, settings.body_timeout_s)
    analyzer = runtime.analyzer
    assert analyzer is not None  # ReadyRuntimeDep
    options = resolve_options(settings, query)

    async def answer() -> PredictResponse:
        image = await runtime.decode(data)
        result = await runtime.infer(Job(image, options))
        return predict_response(image, result, analyzer.classes, analyzer.model, start)

    reply = await unless_client_leaves(request, answer())
    # Built by our own code from typed values, so FastAPI's second validation of it against
    # ``response_model`` (which still documents it) is skipped: ~0.1 ms of the event loop a request.
    return Response(reply.model_dump_json(), media_type="application/json")


@router.get(
    "/info",
    response_model=InfoResponse,
    responses=INFO_RESPONSES,
    summary="Classes, model metadata, detector, device, limits",
)
async def info(runtime: RuntimeDep) -> InfoResponse:
    return InfoResponse.model_validate(runtime.info())
