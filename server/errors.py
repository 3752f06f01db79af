"""Named API errors and the handlers that turn every failure into an ``ErrorBody``.

Clients always get ``{"error": {"code", "message"}}``; tracebacks stay in the
server log. Each error also counts in the ``emotion_errors_total`` metric by code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

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


class ApiError(Exception):
    """An error with a stable machine-readable ``code`` and an HTTP status."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str = "missing or invalid API key") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class RequestTimeout(ApiError):
    """The body did not arrive within ``EMOTION_BODY_TIMEOUT_S``; the connection is closed after the reply."""

    status, code = 408, "request_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Connection": "close"})


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class InvalidParameters(ApiError):
    status, code = 422, "invalid_parameters"


class NotReady(ApiError):
    status, code = 503, "not_ready"

    def __init__(self, message: str = "model is loading; try again shortly") -> None:
        super().__init__(message, headers={"Retry-After": "2"})


class Overloaded(ApiError):
    status, code = 503, "overloaded"

    def __init__(self, message: str = "server is busy; try again shortly") -> None:
        super().__init__(message, headers={"Retry-After": "1"})


#: Pipeline errors carry no HTTP knowledge; this is where they get a status.
DECODE_STATUS: dict[type[DecodeError], int] = {
    UnsupportedImage: 415,
    CorruptImage: 400,
    ImageTooLarge: 413,
    ImageTooComplex: 413,
    InvalidImageShape: 422,
}

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


def error_body(code: str, message: str) -> dict[str, object]:
    return ErrorBody(error=ErrorDetail(code=code, message=message)).model_dump()


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

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(DecodeError)
    async def _decode_error(request: Request, exc: DecodeError) -> JSONResponse:
        return error_response(request, DECODE_STATUS.get(type(exc), 400), exc.code, str(exc))

    @app.exception_handler(BatcherFull)
    async def _full(request: Request, exc: BatcherFull) -> JSONResponse:
        err = Overloaded()
        return error_response(request, err.status, err.code, err.message, err.headers)

    @app.exception_handler(BatcherClosed)
    async def _closed(request: Request, exc: BatcherClosed) -> JSONResponse:
        return error_response(request, 503, "shutting_down", "server is shutting down", {"Retry-After": "5"})

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # The client hung up mid-upload: nobody reads this reply, and it is not a server error.
        return error_response(request, 400, "client_disconnected", "client disconnected during the upload")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(request, exc.status_code, code, message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, 422, "invalid_parameters", _validation_message(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after this response is sent, so the server log gets the traceback.
        # uvicorn closes the connection after a re-raised error, so the reply says so: a client
        # that reused the connection would otherwise get a reset.
        log.error("unhandled error on %s %s: %r", request.method, request.url.path, exc)
        return error_response(
            request, 500, "internal_error", "internal server error", {"Connection": "close"}
        )
