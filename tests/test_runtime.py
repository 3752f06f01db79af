"""server.runtime: background loading, readiness, decode accounting and shutdown, without HTTP in between."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from server_harness import jpeg, server_settings

from emotion_service import EmotionAnalyzer
from server.config import Settings
from server.errors import NotReady
from server.pipeline.batcher import BatcherClosed
from server.pipeline.decode import DecodeError
from server.pipeline.runner import Job, PredictOptions
from server.runtime import Runtime, load_analyzer


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))


@pytest.fixture(scope="module")
def settings(tiny_checkpoint: Path) -> Settings:
    return server_settings(tiny_checkpoint, backend="torch", warmup=False)


async def until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def test_loads_in_the_background_then_serves(settings: Settings, astronaut: np.ndarray) -> None:
    release = threading.Event()

    def gated(s: Settings) -> EmotionAnalyzer:
        release.wait(30)
        return load_analyzer(s)

    async def main() -> None:
        runtime = Runtime(settings, analyzer_factory=gated)
        await runtime.start()  # returns at once: /healthz can answer while the models load
        assert not runtime.ready and runtime.load_error is None
        image = await runtime.decode(jpeg(astronaut))
        with pytest.raises(NotReady):
            await runtime.infer(Job(image, PredictOptions(max_faces=10, min_confidence=0.5)))
        release.set()
        await until(lambda: runtime.ready)
        result = await runtime.infer(Job(image, PredictOptions(max_faces=10, min_confidence=0.5)))
        assert len(result.faces) == 1 and result.faces[0].probs.shape == (len(runtime.classes),)
        await runtime.close()
        assert not runtime.ready
        with pytest.raises(BatcherClosed):
            await runtime.infer(Job(image, PredictOptions(max_faces=10, min_confidence=0.5)))

    run(main())


def test_a_failed_load_is_reported_not_raised(settings: Settings) -> None:
    def broken(s: Settings) -> EmotionAnalyzer:
        raise RuntimeError("weights unreadable")

    async def main() -> None:
        runtime = Runtime(settings, analyzer_factory=broken)
        await runtime.start()
        await until(lambda: runtime.load_error is not None)
        assert runtime.load_error == "RuntimeError: weights unreadable" and not runtime.ready
        assert runtime.info()["ready"] is False  # /v1/info still answers from the checkpoint's metadata
        await runtime.close()

    run(main())


def test_images_being_decoded_count_in_the_queue_depth(settings: Settings, astronaut: np.ndarray) -> None:
    """The autoscaling signal counts images from arrival: decoding ones could still join a batch."""
    big = jpeg(np.tile(astronaut, (6, 6, 1)))  # 3072x3072: decoding takes a while

    async def main() -> None:
        runtime = Runtime(settings, analyzer_factory=load_analyzer)
        assert runtime.queue_depth() == 0
        decodes = [asyncio.create_task(runtime.decode(big)) for _ in range(3)]
        await asyncio.sleep(0)  # let them start
        assert runtime.queue_depth() == 3
        await asyncio.gather(*decodes)
        assert runtime.queue_depth() == 0
        with pytest.raises(DecodeError):
            await runtime.decode(b"not an image")
        assert runtime.queue_depth() == 0  # a failed decode is not left counted
        await runtime.close()

    run(main())


@pytest.mark.parametrize(("backend", "threads", "expected"), [("openvino", None, 1), ("openvino", 2, 2)])
def test_the_server_gives_torch_one_thread_where_openvino_runs_the_networks(
    tiny_checkpoint: Path, backend: str, threads: int | None, expected: int
) -> None:
    """torch only runs the small steps around OpenVINO's networks there, where threads cost more than
    they give; an explicit ``torch_threads`` wins. The torch backend keeps torch's threads (below)."""
    pytest.importorskip("openvino")
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # neither 1 nor the explicit 2: each outcome is told apart
        load_analyzer(server_settings(tiny_checkpoint, backend=backend, torch_threads=threads, warmup=False))
        assert torch.get_num_threads() == expected
        torch.set_num_threads(3)
        load_analyzer(server_settings(tiny_checkpoint, backend="torch", torch_threads=None, warmup=False))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
