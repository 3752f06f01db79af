"""The app factory: ``create_app(settings)`` builds a fresh, self-contained server.

Nothing happens at import time; all state hangs off ``app.state.runtime``, so tests
(and one process hosting several apps) never share models, metrics or settings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse

from server.api import health, rest, stream
from server.api.docs import create_documented_app
from server.api.guards import AllowedHosts, HeadAsGet
from server.config import Settings
from server.errors import install_error_handlers
from server.metrics import RequestMetricsMiddleware
from server.runtime import AnalyzerFactory, Runtime, load_analyzer

WEB_DIR = Path(__file__).resolve().parent / "api" / "web"
ROUTES = frozenset({"/", "/healthz", "/readyz", "/metrics", "/v1/info", "/v1/predict"})


#: The page's own files only: no framing by another site (a camera page under someone else's
#: buttons), scripts, styles and images from this server alone (the stream is a WebSocket to it),
#: no content-type guessing.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; "
    "media-src 'self' blob: mediastream:; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _file_endpoint(path: Path) -> Callable[[], Awaitable[FileResponse]]:
    async def endpoint() -> FileResponse:
        return FileResponse(path, headers=PAGE_HEADERS)

    return endpoint


def web_router(folder: Path) -> APIRouter:
    """The browser page: ``/`` is index.html, every other file of the folder at its relative path.

    One route per file found at startup rather than a catch-all mount at ``/``, which
    would turn a wrong method on an API route (405) into a 404, and no request path
    can reach outside the folder.
    """
    router = APIRouter(include_in_schema=False)
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    index_html = folder / "index.html"

    @router.get("/")
    async def index() -> FileResponse:
        if index_html not in files:
            raise HTTPException(404, "browser page not installed")
        return FileResponse(index_html, headers=PAGE_HEADERS)

    for path in files:
        router.add_api_route("/" + path.relative_to(folder).as_posix(), _file_endpoint(path), methods=["GET"])
    return router


def create_app(
    settings: Settings | None = None, *, analyzer_factory: AnalyzerFactory = load_analyzer
) -> FastAPI:
    """``analyzer_factory`` loads the models (on a worker thread, after startup)."""
    settings = settings or Settings()
    runtime = Runtime(settings, analyzer_factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.close()

    app = create_documented_app(
        title="emotion-service",
        summary="Faces and their FER2013 emotions, per image (REST) or per webcam frame (WebSocket).",
        version="1",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(rest.router)
    app.include_router(stream.router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            max_age=600,
        )
    app.add_middleware(HeadAsGet)
    if settings.allowed_hosts:
        app.add_middleware(AllowedHosts, hosts=settings.allowed_hosts)
    app.add_middleware(RequestMetricsMiddleware, metrics=runtime.metrics, routes=ROUTES)
    app.include_router(web_router(WEB_DIR))
    return app
