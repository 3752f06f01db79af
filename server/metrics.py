"""Prometheus metrics of one app, in a registry of its own.

A per-app :class:`CollectorRegistry` (not the process-global one) lets several
apps live in one process, as they do in the tests, without duplicate-metric errors.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_latency = Histogram(
            "emotion_request_duration_seconds",
            "HTTP request latency by route, method and status",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.frame_latency = Histogram(
            "emotion_stream_frame_duration_seconds",
            "Stream frame latency, from receipt of the frame to its reply being sent",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_latency = Histogram(
            "emotion_stage_duration_seconds",
            "Pipeline stage time: decode per image, detect and classify per batch",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "emotion_batch_size", "Images per model batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_faces = Histogram(
            "emotion_batch_faces", "Faces classified per model batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.frames = Counter("emotion_stream_frames_total", "Stream frames answered", registry=r)
        self.dropped_frames = Counter(
            "emotion_stream_dropped_frames_total",
            "Stream frames skipped: superseded by a newer frame, over the fps cap, or server overload",
            ["reason"],
            registry=r,
        )
        self.active_streams = Gauge("emotion_active_streams", "Open WebSocket streams", registry=r)
        self.errors = Counter(
            "emotion_errors_total", "Errors returned to clients, by code", ["code"], registry=r
        )
        self.ready = Gauge("emotion_ready", "1 once the model is loaded and warmed up", registry=r)
        #: What an autoscaler scales on (deploy/k8s/hpa.yaml): work waiting for this replica's model.
        self.queue_depth = Gauge(
            "emotion_queue_depth",
            "Images waiting for the model: queued for the next batch plus being decoded",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """Times HTTP requests; labels only by the known routes so label cardinality stays bounded."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: frozenset[str]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def _send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            path = scope.get("path", "")
            route = path if path in self.routes else "other"
            self.metrics.request_latency.labels(
                route=route, method=scope.get("method", ""), status=str(status)
            ).observe(time.perf_counter() - start)


def sum_samples(exposition: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``, from /metrics text.

    Benchmarks and tests read the server as a client would; one parser (prometheus-client's)
    keeps them agreeing on what a sample is.
    """
    return sum(
        s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )
