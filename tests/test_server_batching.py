"""Concurrent REST requests and streams share model batches, and batching does not change results."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from server_harness import LiveServer, faces_canvas, frame_640x480, jpeg, recv_json, run, server_settings
from websockets.asyncio.client import connect


@pytest.fixture(scope="module")
def srv(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    # A generous window so concurrent callers reliably meet in one batch on a busy CI machine.
    server = LiveServer(server_settings(tiny_checkpoint, max_wait_ms=80.0, max_batch_size=8)).start()
    yield server
    server.stop()


def scores(faces: list[dict[str, Any]]) -> list[tuple[dict[str, int], np.ndarray]]:
    return [(f["box"], np.array(list(f["emotions"].values()))) for f in faces]


def same_box(a: dict[str, int], b: dict[str, int]) -> bool:
    """Within a pixel: batched and single convolutions may round a coordinate differently."""
    return all(abs(a[k] - b[k]) <= 1 for k in ("x", "y", "w", "h"))


def test_concurrent_requests_and_streams_are_batched_without_changing_results(
    srv: LiveServer, astronaut: np.ndarray
) -> None:
    images = [
        jpeg(astronaut),
        jpeg(faces_canvas(astronaut)),
        jpeg(frame_640x480(astronaut)),
        jpeg(np.ascontiguousarray(astronaut[:, ::-1])),
    ]
    # Reference: one request at a time (each its own batch of 1).
    single = [httpx.post(srv.url + "/v1/predict", content=img, timeout=30).json() for img in images]
    batches_before = srv.metric("emotion_batch_size_count")
    ones_before = srv.metric("emotion_batch_size_bucket", le="1.0")
    assert batches_before == ones_before  # so far every batch had one image

    async def stream_once(img: bytes) -> dict[str, Any]:
        async with connect(srv.ws_url) as ws:
            await ws.send(img)
            return await recv_json(ws)

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            rest = [client.post("/v1/predict", content=img) for img in images * 2]
            streams = [stream_once(images[2]), stream_once(images[0])]
            out = await asyncio.gather(*rest, *streams)
        responses = [r.json() for r in out[: len(rest)]]
        return responses, list(out[len(rest) :])

    rest, streamed = run(main())
    batches = srv.metric("emotion_batch_size_count") - batches_before
    ones = srv.metric("emotion_batch_size_bucket", le="1.0") - ones_before
    images_run = srv.metric("emotion_batch_size_sum")
    assert batches < 10 and ones < batches  # 10 images, fewer batches: at least one batch had > 1 image
    assert images_run >= len(images) + 10

    for got, want in zip(rest, single * 2, strict=True):
        assert len(got["faces"]) == len(want["faces"])
        for (box_g, p_g), (box_w, p_w) in zip(scores(got["faces"]), scores(want["faces"]), strict=True):
            assert same_box(box_g, box_w)
            assert np.allclose(p_g, p_w, atol=1e-4)
    for got, want in zip(streamed, [single[2], single[0]], strict=True):
        for (box_g, p_g), (box_w, p_w) in zip(scores(got["faces"]), scores(want["faces"]), strict=True):
            assert same_box(box_g, box_w) and np.allclose(p_g, p_w, atol=1e-4)
