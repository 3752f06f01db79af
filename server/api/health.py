"""Liveness, readiness and Prometheus metrics.

``/healthz`` and ``/readyz`` stay open even when API keys are configured, so
orchestrators can probe without secrets; ``/metrics`` needs the key then.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from server.api.docs import INVALID_HOST, error_response
from server.deps import ApiKey, RuntimeDep, require_ready
from server.errors import LoadFailed
from server.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])

UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: error_response("model still loading (readyz) or failed to load")
}
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}},
    400: INVALID_HOST,
    401: error_response("missing or invalid API key"),
}


@router.get(
    "/healthz", responses=UNAVAILABLE, summary="The process is alive (and its model did not fail to load)"
)
async def healthz(runtime: RuntimeDep) -> dict[str, str]:
    if runtime.load_error:
        raise LoadFailed()
    return {"status": "ok"}


@router.get("/readyz", responses=UNAVAILABLE, summary="The model is loaded and warmed up; 503 until then")
async def readyz(runtime: RuntimeDep) -> dict[str, str]:
    require_ready(runtime)
    return {"status": "ready"}


@router.get(
    "/metrics",
    dependencies=[ApiKey],
    summary="Prometheus metrics",
    response_class=Response,
    responses=METRICS_RESPONSES,
)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)
