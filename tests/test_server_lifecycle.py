"""Readiness, load failure, graceful shutdown, stream limits, CORS, settings and the CLI."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from server_harness import LiveServer, close_code, frame_640x480, jpeg, recv_json, retry, run, server_settings
from websockets.asyncio.client import connect

from emotion_service import EmotionAnalyzer
from server.config import Settings
from server.runtime import load_analyzer
from shared.protocol import ErrorBody


def error_code(resp: httpx.Response) -> str:
    return ErrorBody.model_validate_json(resp.content).error.code


def test_not_ready_until_warmed_up(tiny_checkpoint: Path, astronaut_jpeg: bytes) -> None:
    gate = threading.Event()

    def slow_factory(settings: Settings) -> EmotionAnalyzer:
        gate.wait(60)
        return load_analyzer(settings)

    srv = LiveServer(server_settings(tiny_checkpoint), analyzer_factory=slow_factory).start(wait_ready=False)
    try:
        assert httpx.get(srv.url + "/healthz").status_code == 200  # alive while loading
        resp = httpx.get(srv.url + "/readyz")
        assert resp.status_code == 503 and error_code(resp) == "not_ready" and "retry-after" in resp.headers
        resp = httpx.post(srv.url + "/v1/predict", content=astronaut_jpeg)
        assert resp.status_code == 503 and error_code(resp) == "not_ready"

        async def refused() -> tuple[int, str]:
            async with connect(srv.ws_url) as ws:
                return await close_code(ws)

        code, reason = run(refused())
        assert code == 1013 and "try again later" in reason
        gate.set()
        assert retry(lambda: httpx.get(srv.url + "/readyz").status_code == 200, timeout=60)
        assert httpx.post(srv.url + "/v1/predict", content=astronaut_jpeg).status_code == 200
    finally:
        gate.set()
        srv.stop()


def test_load_failure_is_reported_not_hidden(tiny_checkpoint: Path, astronaut_jpeg: bytes) -> None:
    """Probes and REST alike: 503 ``load_failed``; REST without ``Retry-After`` (docs/protocol.md:
    waiting does not help, and ``not_ready`` with it would send a client's retry loop round forever)."""

    def broken(settings: Settings) -> EmotionAnalyzer:
        raise RuntimeError("detector weights unreadable")

    srv = LiveServer(server_settings(tiny_checkpoint), analyzer_factory=broken).start(wait_ready=False)
    try:
        assert retry(lambda: srv.runtime.load_error is not None)
        for path in ("/readyz", "/healthz"):
            resp = httpx.get(srv.url + path)
            assert resp.status_code == 503 and error_code(resp) == "load_failed"
            assert "detector weights unreadable" not in resp.text  # details go to the log only
        resp = httpx.post(srv.url + "/v1/predict", content=astronaut_jpeg, timeout=30)
        assert resp.status_code == 503 and error_code(resp) == "load_failed", resp.text
        assert "retry-after" not in resp.headers
        assert "detector weights unreadable" not in resp.text
    finally:
        srv.stop()


def test_graceful_shutdown_finishes_work_and_says_going_away(
    tiny_checkpoint: Path, astronaut: np.ndarray
) -> None:
    # A long batch window keeps both requests in flight when the shutdown starts.
    srv = LiveServer(server_settings(tiny_checkpoint, max_wait_ms=600.0)).start()
    frame = jpeg(frame_640x480(astronaut))

    async def scenario() -> tuple[dict[str, Any], tuple[int, str], httpx.Response]:
        async with connect(srv.ws_url) as ws, httpx.AsyncClient(timeout=30) as client:
            await ws.send(frame)
            request = asyncio.create_task(client.post(srv.url + "/v1/predict", content=frame))
            await asyncio.sleep(0.2)
            srv.server.should_exit = True  # what SIGTERM does
            reply = await recv_json(ws)
            closed = await close_code(ws)
            return reply, closed, await request

    try:
        reply, (code, reason), resp = run(scenario())
    finally:
        srv.stop()
    assert reply["frame"] == 0 and len(reply["faces"]) == 1  # the frame in flight was answered
    assert code == 1001 and "shutting down" in reason
    assert resp.status_code == 200 and len(resp.json()["faces"]) == 1  # the request in flight finished
    assert not srv.thread.is_alive()


@pytest.fixture(scope="module")
def limited(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    settings = server_settings(
        tiny_checkpoint, max_streams=1, stream_max_fps=4.0, cors_origins="http://app.example"
    )
    server = LiveServer(settings).start()
    yield server
    server.stop()


def test_streams_over_the_limit_are_refused_with_1013(limited: LiveServer) -> None:
    async def scenario() -> tuple[int, str]:
        async with connect(limited.ws_url):
            assert retry(lambda: limited.metric("emotion_active_streams") == 1)
            async with connect(limited.ws_url) as second:
                return await close_code(second)

    code, reason = run(scenario())
    assert code == 1013 and "limit of 1 streams" in reason
    assert retry(lambda: limited.metric("emotion_active_streams") == 0)


def test_frames_over_the_fps_cap_are_dropped_and_counted(limited: LiveServer, astronaut: np.ndarray) -> None:
    frame = jpeg(frame_640x480(astronaut))
    before = limited.metric("emotion_stream_dropped_frames_total")

    async def scenario() -> list[dict[str, Any]]:
        replies: list[dict[str, Any]] = []
        async with connect(limited.ws_url) as ws:
            for _ in range(20):  # a burst far above 4 fps
                await ws.send(frame)
            await asyncio.sleep(0.6)  # the bucket refills; the next frame is accepted
            await ws.send(frame)
            while not replies or replies[-1]["frame"] != 20:
                replies.append(await recv_json(ws))
        return replies

    replies = run(scenario())
    assert sum(r["dropped"] for r in replies) + len(replies) == 21
    assert len(replies) <= 6  # the burst allowance (plus refill while sending), not 21 frames
    # replaced while a frame was answered (superseded) or while the stream waited for its cap (rate_limit)
    assert limited.metric("emotion_stream_dropped_frames_total") - before == 21 - len(replies)


def test_cors(limited: LiveServer) -> None:
    headers = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
    resp = httpx.options(limited.url + "/v1/predict", headers=headers)
    assert resp.headers.get("access-control-allow-origin") == "http://app.example"
    resp = httpx.options(limited.url + "/v1/predict", headers={**headers, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in resp.headers


def slow_model(seconds: float) -> Callable[[Settings], EmotionAnalyzer]:
    """An analyzer factory whose every model batch takes ``seconds`` longer: a busy model on demand."""

    def factory(settings: Settings) -> EmotionAnalyzer:
        analyzer = load_analyzer(settings)
        run_batch = analyzer.run_batch

        def slow(jobs: Any) -> Any:
            time.sleep(seconds)
            return run_batch(jobs)

        analyzer.run_batch = slow  # type: ignore[method-assign]
        return analyzer

    return factory


def test_requests_waiting_for_the_model_at_shutdown_get_503_shutting_down(
    tiny_checkpoint: Path, astronaut: np.ndarray
) -> None:
    """A batch outlasting the grace period: the requests still waiting for the model get the
    documented 503 ``shutting_down`` ErrorBody, not uvicorn's plain-text 500 of a cancelled task."""

    settings = server_settings(tiny_checkpoint, shutdown_timeout_s=1.0, max_batch_size=1)
    srv = LiveServer(settings, analyzer_factory=slow_model(3.0)).start()
    frame = jpeg(frame_640x480(astronaut))

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            running = asyncio.create_task(client.post(srv.url + "/v1/predict", content=frame))
            await asyncio.sleep(0.5)
            queued = asyncio.create_task(client.post(srv.url + "/v1/predict", content=frame))
            await asyncio.sleep(0.5)
            srv.server.should_exit = True  # what SIGTERM does
            return list(await asyncio.gather(running, queued))

    try:
        responses = run(scenario())
    finally:
        srv.stop()
    for resp in responses:
        assert resp.status_code == 503, (resp.status_code, resp.text)
        assert error_code(resp) == "shutting_down" and "retry-after" in resp.headers


def test_a_streams_last_frame_is_answered_when_the_model_queue_is_full(
    tiny_checkpoint: Path, astronaut: np.ndarray
) -> None:
    """docs/protocol.md: the last frame a client sends is always answered. With the model's queue
    full (REST requests ahead of it), that frame waits for room instead of being dropped unseen
    (the client then waited until the idle timeout closed its stream)."""

    settings = server_settings(tiny_checkpoint, max_batch_size=1, max_queue=1)
    srv = LiveServer(settings, analyzer_factory=slow_model(0.5)).start()
    frame = jpeg(frame_640x480(astronaut))

    async def scenario() -> tuple[list[httpx.Response], dict[str, Any], float]:
        async with httpx.AsyncClient(timeout=30) as client:
            running = asyncio.create_task(client.post(srv.url + "/v1/predict", content=frame))
            await asyncio.sleep(0.15)
            queued = asyncio.create_task(client.post(srv.url + "/v1/predict", content=frame))
            await asyncio.sleep(0.15)  # the model runs one request, the queue holds the other: full
            async with connect(srv.ws_url) as ws:
                sent = time.monotonic()
                await ws.send(frame)  # the stream's only (so last) frame
                reply = await recv_json(ws, timeout=15)
                waited = time.monotonic() - sent
            return list(await asyncio.gather(running, queued)), reply, waited

    try:
        responses, reply, waited = run(scenario())
        overloaded = srv.metric("emotion_stream_dropped_frames_total", reason="overload")
    finally:
        srv.stop()
    assert [r.status_code for r in responses] == [200, 200]
    assert reply.get("type") == "result" and reply["frame"] == 0 and reply["dropped"] == 0, reply
    assert waited < 10 and overloaded == 0
