"""The API docs: Swagger UI and ReDoc served without a CDN, and the API description.

FastAPI's default ``/docs`` and ``/redoc`` load their JavaScript from a CDN, so they are blank on
a machine without internet; ``fastapi-offline`` ships those assets in its wheel and serves them
from the app. The key's security schemes (Authorize button) are declared by
``server.deps.require_api_key``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from server.errors import (
    BUSY,
    ERRORS,
    INTERNAL,
    LEFT,
    SHUTTING_DOWN,
    ErrorSpec,
    LoadFailed,
    NotReady,
    Unauthorized,
    error_body,
)
from shared.protocol import ErrorBody

DESCRIPTION = """\
REST endpoints are below. The live stream, `WS /v1/stream` (binary JPEG frames in, one JSON result
per processed frame out), is a WebSocket and not part of OpenAPI: its messages, close codes and
drop/tracking rules are in `docs/protocol.md` of the source tree. With `EMOTION_API_KEYS` set,
`/v1/*` and `/metrics` need a key: press **Authorize** and fill in either scheme.
"""


#: What an example in the document says for each code: the server's wording, with made-up numbers.
EXAMPLE_MESSAGES: dict[str, str] = {
    "invalid_image": "corrupt or truncated JPEG data",
    "bad_request": "empty body: no image",
    "client_disconnected": LEFT,
    "invalid_host": "the Host header names a host this server does not serve",
    "unauthorized": str(Unauthorized()),
    "request_timeout": "the body did not arrive within 30 s",
    "payload_too_large": "body of 20000000 bytes exceeds the limit of 10485760 bytes",
    "image_too_large": "image is 9000x9000 = 81000000 pixels; the limit is 40000000",
    "image_too_complex": "JPEG has 60 scans; at 6000x4000 the limit is 41 (progressive decoding costs "
    "pixels x scans)",
    "unsupported_media_type": "unsupported image format: expected JPEG, PNG, WEBP",
    "invalid_parameters": "query.max_faces: Input should be greater than or equal to 1",
    "invalid_image_shape": "image is 4000x10: an aspect ratio over 50:1 holds no face",
    "headers_too_large": "request headers over 65536 bytes",
    "not_ready": str(NotReady()),
    "load_failed": str(LoadFailed()),
    "overloaded": BUSY,
    "shutting_down": SHUTTING_DOWN,
}


def _specs(code: str) -> list[ErrorSpec]:
    specs = [spec for spec in (*ERRORS.values(), INTERNAL) if spec.code == code]
    if not specs:
        raise ValueError(f"no row of server.errors.ERRORS has the code {code!r}")
    return specs


def error_responses(when: Mapping[str, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI response entries for the error codes in ``when`` (code -> when it is sent), one per
    status (the status of the code's row in :data:`server.errors.ERRORS`): an ``ErrorBody`` whose
    description and examples name every code the status comes with, so a client generated from the
    document alone knows them all."""
    by_status: dict[int, list[str]] = {}
    for code in when:
        statuses = {spec.status for spec in _specs(code)}
        if len(statuses) != 1:
            raise ValueError(f"{code!r} comes with several statuses: {sorted(statuses)}")
        by_status.setdefault(statuses.pop(), []).append(code)
    entries: dict[int | str, dict[str, Any]] = {}
    for status, codes in by_status.items():
        examples = {code: {"value": error_body(code, EXAMPLE_MESSAGES[code])} for code in codes}
        entries[status] = {
            "model": ErrorBody,
            "description": "\n".join(f"- `{code}`: {when[code]}" for code in codes),
            "content": {"application/json": {"examples": examples}},
        }
    return entries


#: What the server's edge (server/connection_limits.py) answers to any request, before a route
#: runs: declared on every operation, so a client generated from the schema expects them.
ANY_REQUEST = error_responses(
    {
        "request_timeout": "the request line and headers did not arrive within the header timeout",
        "headers_too_large": "request line and headers over 64 KiB",
    }
)
#: The Host guard (server/api/guards.py) answers every route but the probes.
INVALID_HOST = "EMOTION_ALLOWED_HOSTS is set and the Host header names another host"
UNAUTHORIZED = "missing or invalid API key"


def create_documented_app(**kwargs: Any) -> FastAPI:
    """A FastAPI app whose ``/docs`` and ``/redoc`` need no internet (assets from fastapi-offline),
    with :data:`ANY_REQUEST` declared on every operation."""
    return FastAPIOffline(description=DESCRIPTION, responses=ANY_REQUEST, **kwargs)
