"""Liveness, readiness and Prometheus metrics.

``/healthz`` and ``/readyz`` stay open even when API keys are configured, so
orchestrators can probe without secrets; ``/metrics`` needs the key then.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel

from server.api.docs import INVALID_HOST, UNAUTHORIZED, error_responses
from server.deps import ApiKey, RuntimeDep, require_ready
from server.errors import LoadFailed
from server.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])

LOAD_FAILED = "the model failed to load (waiting does not help; the reason is in the server log)"
HEALTHZ_RESPONSES = error_responses({"load_failed": LOAD_FAILED})
READYZ_RESPONSES = error_responses(
    {
        "not_ready": "the model is still loading or warming up, or the server is stopping",
        "load_failed": LOAD_FAILED,
    }
)


class Alive(BaseModel):
    """``/healthz``'s 200 body, declared exactly (a probe may match on it)."""

    status: Literal["ok"]


class Ready(BaseModel):
    """``/readyz``'s 200 body."""

    status: Literal["ready"]


METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}},
    **error_responses({"invalid_host": INVALID_HOST, "unauthorized": UNAUTHORIZED}),
}


@router.get(
    "/healthz",
    responses=HEALTHZ_RESPONSES,
    summary="The process is alive (and its model did not fail to load)",
)
async def healthz(runtime: RuntimeDep) -> Alive:
    if runtime.load_error:
        raise LoadFailed()
    return Alive(status="ok")


@router.get(
    "/readyz", responses=READYZ_RESPONSES, summary="The model is loaded and warmed up; 503 until then"
)
async def readyz(runtime: RuntimeDep) -> Ready:
    require_ready(runtime)
    return Ready(status="ready")


@router.get(
    "/metrics",
    dependencies=[ApiKey],
    summary="Prometheus metrics",
    response_class=Response,
    responses=METRICS_RESPONSES,
)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)
