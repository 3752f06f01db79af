"""The API docs: Swagger UI and ReDoc served without a CDN, and the API description.

FastAPI's default ``/docs`` and ``/redoc`` load their JavaScript from a CDN, so they are blank on
a machine without internet; ``fastapi-offline`` ships those assets in its wheel and serves them
from the app. The key's security schemes (Authorize button) are declared by
``server.deps.require_api_key``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
#: What each header of :data:`server.errors.ERRORS` tells the client (a header added there needs
#: a line here).
HEADER_MEANINGS = {
    "Retry-After": "seconds to wait before trying again",
    "WWW-Authenticate": "the scheme to send the key with",
}
#: ``Connection: close`` (408, 431, 500) is for the HTTP library, which handles it, not the API's.
TRANSPORT_HEADERS = frozenset({"Connection"})


def _specs(code: str) -> list[ErrorSpec]:
    specs = [spec for spec in (*ERRORS.values(), INTERNAL) if spec.code == code]
    if not specs:
        raise ValueError(f"no row of server.errors.ERRORS has the code {code!r}")
    return specs


def _headers(codes: Sequence[str]) -> dict[str, Any]:
    """The headers the rows of ``codes`` add, each ``required`` when every one of them adds it."""
    sent: dict[str, dict[str, str]] = {}  # header -> code -> value
    for code in codes:
        for spec in _specs(code):
            for name, value in spec.headers.items():
                if name not in TRANSPORT_HEADERS:
                    sent.setdefault(name, {})[code] = value
    headers = {}
    for name, values in sent.items():
        told = ", ".join(f"`{value}` with `{code}`" for code, value in values.items())
        missing = ", ".join(f"`{code}`" for code in codes if code not in values)
        integer = all(value.isdigit() for value in values.values())
        headers[name] = {
            "description": f"{HEADER_MEANINGS[name]}: {told}"
            + (f"; not sent with {missing}" if missing else ""),
            "required": not missing,
            "schema": {"type": "integer", "minimum": 0} if integer else {"type": "string"},
        }
    return headers


def error_responses(when: Mapping[str, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI response entries for the error codes in ``when`` (code -> when it is sent), one per
    status (the status of the code's row in :data:`server.errors.ERRORS`): an ``ErrorBody`` whose
    description and examples name every code the status comes with, and the headers the codes add,
    so a client generated from the document alone knows them all."""
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
        if headers := _headers(codes):
            entries[status]["headers"] = headers
    return entries


#: What the server's edge (server/connection_limits.py) answers to any request, before a route
#: runs: declared on every operation, so a client generated from the schema expects them.
ANY_REQUEST = error_responses(
    {
        "request_timeout": "the request line and headers did not arrive within the header timeout",
        "headers_too_large": "request line and headers over 64 KiB",
    }
)
#: When the Host guard (server/api/guards.py; every route but the probes) and the key check answer,
#: in the words of every route's 400 ``invalid_host`` and 401 ``unauthorized``.
INVALID_HOST = "EMOTION_ALLOWED_HOSTS is set and the Host header names another host"
UNAUTHORIZED = "missing or invalid API key"


def create_documented_app(**kwargs: Any) -> FastAPI:
    """A FastAPI app whose ``/docs`` and ``/redoc`` need no internet (assets from fastapi-offline),
    with :data:`ANY_REQUEST` declared on every operation."""
    return FastAPIOffline(description=DESCRIPTION, responses=ANY_REQUEST, **kwargs)
