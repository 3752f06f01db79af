"""ASGI middleware at the edge of the app: HEAD answered like GET, and a Host allow-list.

* **HEAD**: FastAPI routes answer only the methods they list, so health checks that use HEAD
  got 405. HEAD is routed as GET; uvicorn sends the GET reply's headers without its body
  (it knows the request was HEAD). A route without GET still answers 405.
* **Host**: behind a proxy the app is reached under known names; a request naming another host
  (DNS rebinding, a misrouted request) is refused with 400 ``invalid_host`` (a WebSocket
  handshake with 403) before any route runs. Off unless ``EMOTION_ALLOWED_HOSTS`` is set. The
  probes stay open to any Host, because orchestrators address pods by IP.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import ERRORS, InvalidHost, json_reply

PROBES = frozenset({"/healthz", "/readyz"})


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}  # uvicorn keeps its own scope, which still says HEAD
        await self.app(scope, receive, send)


def host_allowed(host: str, patterns: Sequence[str]) -> bool:
    """``host`` (a Host header, port and all) matches ``example.com`` or ``*.example.com``."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip().lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower()
        if pattern == "*" or name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


class AllowedHosts:
    def __init__(self, app: ASGIApp, hosts: Sequence[str]) -> None:
        self.app, self.hosts = app, list(hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in PROBES:
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host", "")
        if host_allowed(host, self.hosts):
            await self.app(scope, receive, send)
            return
        spec = ERRORS[InvalidHost]
        runtime = getattr(getattr(scope.get("app"), "state", None), "runtime", None)
        if runtime is not None:
            runtime.metrics.errors.labels(code=spec.code).inc()
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": spec.close, "reason": "host not allowed"})
            return
        error = InvalidHost("the Host header names a host this server does not serve")
        await json_reply(error)(scope, receive, send)
