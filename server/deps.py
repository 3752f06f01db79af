"""Request dependencies as ``Annotated`` aliases, so handlers declare what they need by type.

The dependencies are ``async def`` although none awaits anything: FastAPI runs a plain ``def``
dependency on its thread pool, one thread hop per dependency and request (four per
``POST /v1/predict``), which a profile showed as a quarter of the event loop's own time per
request (docs/benchmarks.md, "Where a request's time goes"). None of them blocks.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from server.config import Settings
from server.errors import LoadFailed, NotReady, Unauthorized
from server.runtime import Runtime


async def get_runtime(conn: HTTPConnection) -> Runtime:
    runtime: Runtime = conn.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_settings(runtime: RuntimeDep) -> Settings:
    return runtime.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_ready_runtime(runtime: Runtime) -> Runtime:
    """The stream's check: ``runtime`` if its models are loaded, else :class:`NotReady` (1013, with
    "model failed to load" as the reason after a failed load)."""
    if not runtime.ready:
        raise NotReady("model failed to load") if runtime.load_error else NotReady()
    return runtime


def require_ready(runtime: Runtime) -> Runtime:
    """REST's and ``/readyz``'s check: after a failed load 503 ``load_failed`` without ``Retry-After``
    (waiting does not help), while loading 503 ``not_ready``."""
    if runtime.load_error:
        raise LoadFailed()
    if not runtime.ready:
        raise NotReady()
    return runtime


async def _ready_runtime(runtime: RuntimeDep) -> Runtime:
    return require_ready(runtime)


ReadyRuntimeDep = Annotated[Runtime, Depends(_ready_runtime)]


def presented_key(conn: HTTPConnection, allow_query: bool = False) -> str | None:
    """The key from ``Authorization: Bearer``, ``X-API-Key`` or (WebSocket only) ``?api_key=``."""
    auth = conn.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if key := conn.headers.get("x-api-key"):
        return key.strip()
    if allow_query and (key := conn.query_params.get("api_key")):
        return key
    return None


def key_is_valid(settings: Settings, key: str | None) -> bool:
    """Constant-time comparison against every configured key (no early exit on a match)."""
    if not settings.auth_enabled:
        return True
    if not key:
        return False
    given = key.encode()
    matches = [hmac.compare_digest(given, k.encode()) for k in settings.key_values()]
    return any(matches)


# Declared only so OpenAPI lists the two ways to send a key (Swagger UI's Authorize button);
# presented_key() still reads them, so the rules live in one place.
_BEARER = HTTPBearer(auto_error=False, scheme_name="bearer", description="`Authorization: Bearer <key>`")
_HEADER = APIKeyHeader(
    name="X-API-Key", auto_error=False, scheme_name="apiKey", description="`X-API-Key: <key>`"
)


async def require_api_key(
    conn: HTTPConnection,
    settings: SettingsDep,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],
    _header: Annotated[str | None, Security(_HEADER)],
) -> None:
    """Router dependency for HTTP routes; the WebSocket route checks with ``allow_query=True`` itself."""
    if not key_is_valid(settings, presented_key(conn)):
        raise Unauthorized()


ApiKey = Depends(require_api_key)
