"""The API docs: OpenAPI with the API-key security scheme, and Swagger UI / ReDoc served offline.

FastAPI's default ``/docs`` and ``/redoc`` load their JavaScript from a CDN, so they are blank on
a machine without internet; ``fastapi-offline`` ships those assets in its wheel and serves them
from the app. The keys are declared as two alternative schemes (``Authorization: Bearer`` and
``X-API-Key``), so Swagger UI shows an Authorize button and every keyed operation a lock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline

from server.deps import require_api_key

DESCRIPTION = """\
REST endpoints are below. The live stream, `WS /v1/stream` (binary JPEG frames in, one JSON result
per processed frame out), is a WebSocket and not part of OpenAPI: its messages, close codes and
drop/tracking rules are in `docs/protocol.md` of the source tree. With `EMOTION_API_KEYS` set,
`/v1/*` and `/metrics` need a key: press **Authorize** and fill in either scheme.
"""

SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <key>`"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "`X-API-Key: <key>`"},
}


def create_documented_app(**kwargs: Any) -> FastAPI:
    """A FastAPI app whose ``/docs`` and ``/redoc`` need no internet, with keyed routes marked."""
    app = FastAPIOffline(description=DESCRIPTION, **kwargs)
    app.openapi = _openapi_with_key_security(app)  # type: ignore[method-assign]
    return app


def _needs_key(dependant: Dependant) -> bool:
    return any(d.call is require_api_key or _needs_key(d) for d in dependant.dependencies)


def _openapi_with_key_security(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)  # builds and caches app.openapi_schema; amended in place
            schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            for route in app.routes:
                if isinstance(route, APIRoute) and route.include_in_schema and _needs_key(route.dependant):
                    for method in route.methods:
                        op = schema["paths"][route.path_format][method.lower()]
                        op["security"] = [{name: []} for name in SECURITY_SCHEMES]
        return app.openapi_schema

    return openapi
