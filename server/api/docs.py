"""The API docs: Swagger UI and ReDoc served without a CDN, and the API description.

FastAPI's default ``/docs`` and ``/redoc`` load their JavaScript from a CDN, so they are blank on
a machine without internet; ``fastapi-offline`` ships those assets in its wheel and serves them
from the app. The key's security schemes (Authorize button) are declared by
``server.deps.require_api_key``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from shared.protocol import ErrorBody

DESCRIPTION = """\
REST endpoints are below. The live stream, `WS /v1/stream` (binary JPEG frames in, one JSON result
per processed frame out), is a WebSocket and not part of OpenAPI: its messages, close codes and
drop/tracking rules are in `docs/protocol.md` of the source tree. With `EMOTION_API_KEYS` set,
`/v1/*` and `/metrics` need a key: press **Authorize** and fill in either scheme.
"""


def error_response(description: str) -> dict[str, Any]:
    """An OpenAPI response entry: an ``ErrorBody`` and when it is sent."""
    return {"model": ErrorBody, "description": description}


#: What the server's edge (server/connection_limits.py) answers to any request, before a route
#: runs: declared on every operation, so a client generated from the schema expects them.
ANY_REQUEST: dict[int | str, dict[str, Any]] = {
    408: error_response("the request line and headers did not arrive within the header timeout"),
    431: error_response("request line and headers over 64 KiB"),
}
#: The Host guard (server/api/guards.py) answers every route but the probes.
INVALID_HOST = error_response("EMOTION_ALLOWED_HOSTS is set and the Host header names another host")


def create_documented_app(**kwargs: Any) -> FastAPI:
    """A FastAPI app whose ``/docs`` and ``/redoc`` need no internet (assets from fastapi-offline),
    with :data:`ANY_REQUEST` declared on every operation."""
    return FastAPIOffline(description=DESCRIPTION, responses=ANY_REQUEST, **kwargs)
