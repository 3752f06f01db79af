"""Every failure a client can be told about, in one table: HTTP status, error code, WebSocket close code.

Clients always get ``{"error": {"code", "message"}}`` over HTTP, or a close code and reason on
a stream; tracebacks stay in the server log. The pipeline's errors (decode, batcher) carry no
API knowledge, and the API's own errors below carry none either: :data:`ERRORS` gives each its
status, code and close code, for the HTTP handlers (:func:`install_error_handlers`), the stream
(``server/api/stream.py``), the Host guard and the connection limits below the app
(``server/connection_limits.py``) alike, so the same failure gets the same code on every
surface. Each error also counts in the ``emotion_errors_total`` metric by code (on a stream,
``ws_<close code>``). The codes are documented in docs/protocol.md, "Errors" and "Closes".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from server.pipeline.batcher import BatcherClosed, BatcherFull
from server.pipeline.decode import (
    CorruptImage,
    DecodeError,
    ImageTooComplex,
    ImageTooLarge,
    InvalidImageShape,
    UnsupportedImage,
)
from shared.protocol import ErrorBody, ErrorDetail

log = logging.getLogger(__name__)

#: Private-use close code (4000-4999) for "no frame within EMOTION_STREAM_IDLE_TIMEOUT_S", after HTTP 408.
WS_IDLE_TIMEOUT = 4408
BUSY = "server is busy; try again shortly"
SHUTTING_DOWN = "server is shutting down"
LEFT = "client disconnected during the upload"


@dataclass(frozen=True)
class ErrorSpec:
    """How one kind of failure reaches a client."""

    status: int  # HTTP status
    code: str  # ErrorBody code
    close: int  # WebSocket close code, when it ends a stream
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Told to the client instead of the exception's own text, which is then for the log only.
    message: str | None = None


class ApiError(Exception):
    """A failure the API raises itself; its text is for the client, its row in :data:`ERRORS`
    says how it is sent."""


class BadRequest(ApiError):
    """Empty body, malformed multipart."""


class Unauthorized(ApiError):
    def __init__(self, message: str = "missing or invalid API key") -> None:
        super().__init__(message)


class Forbidden(ApiError):
    """A browser page from an origin that may not open a stream."""


class RequestTimeout(ApiError):
    """The head or the body did not arrive in time (``EMOTION_HEADER_TIMEOUT_S``,
    ``EMOTION_BODY_TIMEOUT_S``; the connection is closed after the reply), or a stream sent no
    frame within ``EMOTION_STREAM_IDLE_TIMEOUT_S``."""


class PayloadTooLarge(ApiError):
    """A body or a stream frame over ``EMOTION_MAX_BODY_BYTES``."""


class HeadersTooLarge(ApiError):
    """Request line and headers, or trailers, over ``MAX_HEAD_BYTES`` (server/connection_limits.py)."""


class UnsupportedMediaType(ApiError):
    """A content type, or a stream frame, the route does not take."""


class InvalidParameters(ApiError):
    pass


class InvalidHost(ApiError):
    """``EMOTION_ALLOWED_HOSTS`` is set and the Host header names another host."""


class NotReady(ApiError):
    def __init__(self, message: str = "model is loading; try again later") -> None:
        super().__init__(message)


class LoadFailed(ApiError):
    """The probes are open, so they say only that loading failed; the path and the exception
    are in the server log (``model loading failed``), where an operator looks."""

    def __init__(self, message: str = "model failed to load; see the server log") -> None:
        super().__init__(message)


class Overloaded(ApiError):
    def __init__(self, message: str = BUSY) -> None:
        super().__init__(message)


#: Looked up along the exception's class hierarchy (a subclass of a listed error gets its row
#: unless it has its own). The pipeline's decode errors name their code themselves (the
#: in-process API raises them too); the table gives them their status and close code.
ERRORS: dict[type[Exception], ErrorSpec] = {
    # the API's own: (HTTP status, code, WebSocket close code[, headers][, message])
    BadRequest: ErrorSpec(400, "bad_request", 1003),
    ClientDisconnect: ErrorSpec(400, "client_disconnected", 1001, message=LEFT),
    InvalidHost: ErrorSpec(400, "invalid_host", 1008),
    Unauthorized: ErrorSpec(401, "unauthorized", 1008, {"WWW-Authenticate": "Bearer"}),
    Forbidden: ErrorSpec(403, "forbidden", 1008),
    RequestTimeout: ErrorSpec(408, "request_timeout", WS_IDLE_TIMEOUT, {"Connection": "close"}),
    PayloadTooLarge: ErrorSpec(413, "payload_too_large", 1009),
    UnsupportedMediaType: ErrorSpec(415, "unsupported_media_type", 1003),
    InvalidParameters: ErrorSpec(422, "invalid_parameters", 1008),
    HeadersTooLarge: ErrorSpec(431, "headers_too_large", 1009, {"Connection": "close"}),
    NotReady: ErrorSpec(503, "not_ready", 1013, {"Retry-After": "2"}),
    LoadFailed: ErrorSpec(503, "load_failed", 1011),
    Overloaded: ErrorSpec(503, "overloaded", 1013, {"Retry-After": "1"}),
    # the pipeline's
    DecodeError: ErrorSpec(400, DecodeError.code, 1003),
    CorruptImage: ErrorSpec(400, CorruptImage.code, 1003),
    UnsupportedImage: ErrorSpec(415, UnsupportedImage.code, 1003),
    ImageTooLarge: ErrorSpec(413, ImageTooLarge.code, 1009),
    ImageTooComplex: ErrorSpec(413, ImageTooComplex.code, 1009),
    InvalidImageShape: ErrorSpec(422, InvalidImageShape.code, 1003),
    BatcherFull: ErrorSpec(503, "overloaded", 1013, {"Retry-After": "1"}, message=BUSY),
    BatcherClosed: ErrorSpec(503, "shutting_down", 1001, {"Retry-After": "5"}, message=SHUTTING_DOWN),
}
#: Anything else: a bug. The client gets no detail; the server log gets the traceback.
INTERNAL = ErrorSpec(500, "internal_error", 1011, {"Connection": "close"}, message="internal server error")

#: Errors the framework raises itself (unknown route, wrong method) have only a status.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_parameters",
    429: "too_many_requests",
    503: "unavailable",
}


def spec_for(exc: BaseException) -> ErrorSpec:
    """``exc``'s row in :data:`ERRORS`, or :data:`INTERNAL` for an error no row names."""
    for cls in type(exc).__mro__:
        if (spec := ERRORS.get(cls)) is not None:
            return spec
    return INTERNAL


def client_message(exc: BaseException, spec: ErrorSpec | None = None) -> str:
    """What the client is told about ``exc``."""
    spec = spec or spec_for(exc)
    return spec.message if spec.message is not None else str(exc)


def error_body(code: str, message: str) -> dict[str, object]:
    return ErrorBody(error=ErrorDetail(code=code, message=message)).model_dump()


def json_reply(exc: BaseException) -> JSONResponse:
    """``exc`` as an HTTP reply: its status, an ``ErrorBody``, its headers."""
    spec = spec_for(exc)
    body = error_body(spec.code, client_message(exc, spec))
    return JSONResponse(body, status_code=spec.status, headers=dict(spec.headers))


def raw_reply(exc: BaseException) -> bytes:
    """``exc`` as a whole HTTP/1.1 reply, for code below the app (uvicorn's protocols), which
    then closes the connection."""
    spec = spec_for(exc)
    body = ErrorBody(error=ErrorDetail(code=spec.code, message=client_message(exc, spec))).model_dump_json()
    headers = {
        "content-type": "application/json",
        "content-length": str(len(body.encode())),
        **{name.lower(): value for name, value in spec.headers.items()},
        "connection": "close",
    }
    head = f"HTTP/1.1 {spec.status} {HTTPStatus(spec.status).phrase}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (head + "\r\n" + body).encode()


def _count(request: Request, code: str) -> None:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is not None:
        runtime.metrics.errors.labels(code=code).inc()


def error_response(
    request: Request, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    _count(request, code)
    return JSONResponse(error_body(code, message), status_code=status, headers=dict(headers or {}))


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Register handlers so no route can answer with a traceback or a non-ErrorBody error."""

    async def _listed(request: Request, exc: Exception) -> JSONResponse:
        _count(request, spec_for(exc).code)
        return json_reply(exc)

    for cls in ERRORS:
        app.add_exception_handler(cls, _listed)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(request, exc.status_code, code, message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        spec = ERRORS[InvalidParameters]
        return error_response(request, spec.status, spec.code, _validation_message(exc), spec.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after this response is sent, so the server log gets the traceback.
        # uvicorn closes the connection after a re-raised error, so the reply says so: a client
        # that reused the connection would otherwise get a reset.
        log.error("unhandled error on %s %s: %r", request.method, request.url.path, exc)
        _count(request, INTERNAL.code)
        return json_reply(exc)
