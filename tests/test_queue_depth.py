"""``emotion_queue_depth`` (the HPA's signal in deploy/k8s/hpa.yaml) counts images waiting for the model."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from server_harness import LiveServer, retry, server_settings

from emotion_service import EmotionAnalyzer
from server.config import Settings
from server.pipeline.runner import Job, JobResult
from server.runtime import load_analyzer


def test_queue_depth_rises_while_the_model_is_busy_and_falls_after(
    tiny_checkpoint: Path, astronaut_jpeg: bytes
) -> None:
    gate = threading.Event()

    class HeldAnalyzer(EmotionAnalyzer):
        """The real analyzer; its first batch waits for the test, so requests pile up behind it."""

        def run_batch(self, jobs: Sequence[Job]) -> list[JobResult]:
            gate.wait(30)
            return super().run_batch(jobs)

    def factory(settings: Settings) -> EmotionAnalyzer:
        analyzer = load_analyzer(settings)
        analyzer.__class__ = HeldAnalyzer
        return analyzer

    srv = LiveServer(server_settings(tiny_checkpoint, max_batch_size=1), analyzer_factory=factory).start()
    try:
        assert srv.metric("emotion_queue_depth") == 0
        with ThreadPoolExecutor(4) as pool:
            posts = [
                pool.submit(httpx.post, srv.url + "/v1/predict", content=astronaut_jpeg, timeout=60)
                for _ in range(4)
            ]
            # one request is in the held batch, the other three wait in the queue
            assert retry(lambda: srv.metric("emotion_queue_depth") == 3, timeout=20)
            gate.set()
            assert [p.result().status_code for p in posts] == [200] * 4
        assert srv.metric("emotion_queue_depth") == 0
    finally:
        gate.set()
        srv.stop()
