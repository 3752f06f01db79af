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

DESCRIPTION = """\
REST endpoints are below. The live stream, `WS /v1/stream` (binary JPEG frames in, one JSON result
per processed frame out), is a WebSocket and not part of OpenAPI: its messages, close codes and
drop/tracking rules are in `docs/protocol.md` of the source tree. With `EMOTION_API_KEYS` set,
`/v1/*` and `/metrics` need a key: press **Authorize** and fill in either scheme.
"""


def create_documented_app(**kwargs: Any) -> FastAPI:
    """A FastAPI app whose ``/docs`` and ``/redoc`` need no internet (assets from fastapi-offline)."""
    return FastAPIOffline(description=DESCRIPTION, **kwargs)
