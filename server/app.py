"""The app factory: ``create_app(settings)`` builds a fresh, self-contained server.

Nothing happens at import time; all state hangs off ``app.state.runtime``, so tests
(and one process hosting several apps) never share models, metrics or settings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse

from server.api import health, rest, stream
from server.config import Settings
from server.errors import install_error_handlers
from server.metrics import RequestMetricsMiddleware
from server.pipeline.runner import Pipeline
from server.runtime import Runtime, build_pipeline

WEB_DIR = Path(__file__).resolve().parent / "api" / "web"
ROUTES = frozenset({"/", "/healthz", "/readyz", "/metrics", "/v1/info", "/v1/predict"})


def web_router(folder: Path) -> APIRouter:
    """The browser page: ``/`` is index.html, other files of the folder by name.

    Explicit routes rather than a catch-all mount at ``/``, which would turn a wrong
    method on an API route (405) into a 404. Only files present at startup are
    served, so no path can reach outside the folder.
    """
    router = APIRouter(include_in_schema=False)
    files = {p.name: p for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}

    @router.get("/")
    async def index() -> FileResponse:
        if "index.html" not in files:
            raise HTTPException(404, "browser page not installed")
        return FileResponse(files["index.html"])

    @router.get("/{name}")
    async def asset(name: str) -> FileResponse:
        if name not in files:
            raise HTTPException(404, "Not Found")
        return FileResponse(files[name])

    return router


PipelineFactory = Callable[[Settings, str], Pipeline]


def create_app(
    settings: Settings | None = None, *, pipeline_factory: PipelineFactory = build_pipeline
) -> FastAPI:
    """``pipeline_factory`` loads the models (on a worker thread, after startup)."""
    settings = settings or Settings()
    runtime = Runtime(settings, pipeline_factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.close()

    app = FastAPI(
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
    app.add_middleware(RequestMetricsMiddleware, metrics=runtime.metrics, routes=ROUTES)
    app.include_router(web_router(WEB_DIR))
    return app
