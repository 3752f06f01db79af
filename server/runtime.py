"""What one app instance owns: models, the batcher, thread pools, open streams, metrics.

It lives on ``app.state.runtime``, created by :func:`server.app.create_app` and
started/stopped by the lifespan. Loading and warm-up run in the background after
startup, so ``/healthz`` answers at once and ``/readyz`` turns 200 only when the
first real request would be fast.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Protocol

import torch

from emotion_service.analyzer import EmotionAnalyzer
from server.config import Settings
from server.errors import NotReady
from server.metrics import Metrics
from server.model.checkpoint import CheckpointMeta, read_meta
from server.pipeline.backend import resolve_backend
from server.pipeline.batcher import Batcher
from server.pipeline.decode import SUPPORTED_FORMATS, DecodedImage, decode_image
from server.pipeline.detect.options import detector_input, resolve_detector
from server.pipeline.runner import Job, JobResult, work_size

log = logging.getLogger(__name__)


class Closable(Protocol):
    async def close(self, code: int, reason: str) -> None: ...


class StreamHub:
    """Open streams, so there is a cap on them (in all, and per client) and shutdown can close
    each one properly."""

    def __init__(self, limit: int, per_client: int = 0) -> None:
        self.limit = limit
        self.per_client = per_client  # 0: no per-client cap
        self._open: dict[Closable, str] = {}  # stream -> client

    def __len__(self) -> int:
        return len(self._open)

    def try_add(self, stream: Closable, client: str = "") -> str | None:
        """None if ``stream`` got a slot, else why not."""
        if len(self._open) >= self.limit:
            return f"server at its limit of {self.limit} streams"
        if self.per_client and sum(c == client for c in self._open.values()) >= self.per_client:
            return f"client at its limit of {self.per_client} streams"
        self._open[stream] = client
        return None

    def discard(self, stream: Closable) -> None:
        self._open.pop(stream, None)

    async def close_all(self, code: int, reason: str, timeout: float) -> None:
        if self._open:
            log.info("closing %d stream(s): %s", len(self._open), reason)
            try:
                await asyncio.wait_for(
                    asyncio.gather(
                        *(s.close(code, reason) for s in list(self._open)), return_exceptions=True
                    ),
                    timeout=max(timeout, 0.1),
                )
            except TimeoutError:
                log.warning("%d stream(s) did not close within %.1fs", len(self._open), timeout)


AnalyzerFactory = Callable[[Settings], EmotionAnalyzer]


def load_analyzer(settings: Settings) -> EmotionAnalyzer:
    """Load both models and warm them up (slow: runs on a worker thread).

    Where OpenVINO runs both networks, torch only does the small steps around them (resizes, box
    decoding, NMS, crops), on tensors too small to gain from threads: at several threads each op
    pays for waking the others, so the server gives torch one thread unless ``torch_threads``
    says otherwise (docs/benchmarks.md, "CPU speed: what was chosen and why"). Not done for
    :class:`EmotionAnalyzer` in general: a library must not change its caller's torch."""
    analyzer = EmotionAnalyzer.from_settings(settings)
    if settings.torch_threads is None and analyzer.pipeline.classifier.backend == "openvino":
        torch.set_num_threads(1)
    return analyzer


def release_free_heap() -> None:
    """Give the heap that model loading, conversion and warm-up freed back to the OS (glibc only).

    Loading and compiling the models frees hundreds of MiB that glibc's allocator otherwise keeps
    mapped for the life of the process; ``malloc_trim`` returns it, so idle RSS is what is in use.
    """
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        pass


class Runtime:
    def __init__(self, settings: Settings, analyzer_factory: AnalyzerFactory = load_analyzer) -> None:
        self.settings = settings
        self.device = settings.torch_device()
        #: Model runtime actually used (``auto`` resolved): torch or openvino.
        self.backend = resolve_backend(settings.backend, self.device)
        #: Face detector actually used (``auto`` resolved): blazeface, ssd or haar.
        self.detector = resolve_detector(settings.detector, self.backend)
        self.metrics = Metrics()
        self.streams = StreamHub(settings.max_streams, settings.max_streams_per_client)
        self.meta: CheckpointMeta = read_meta(settings.checkpoint)  # fails fast on a wrong file
        #: The in-process API object the server is built on; set once loaded.
        self.analyzer: EmotionAnalyzer | None = None
        self.batcher: Batcher[Job, JobResult] | None = None
        self.model_version = self.meta.version
        self.load_error: str | None = None
        self.ready = False
        self.started_at = time.time()
        self._factory = analyzer_factory
        self._decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self._load_task: asyncio.Task[None] | None = None
        #: Images being decoded: the only ones that could still join a batch that is forming.
        self._decoding = 0
        self.metrics.queue_depth.set_function(self.queue_depth)

    def queue_depth(self) -> int:
        """Images waiting for the model (queued plus decoding): the autoscaling signal."""
        return self._decoding + (self.batcher.pending if self.batcher is not None else 0)

    async def start(self) -> None:
        """Begin loading in the background; returns at once so the server can answer /healthz."""
        self._load_task = asyncio.get_running_loop().create_task(self._load(), name="model-load")

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            analyzer = await loop.run_in_executor(None, self._factory, self.settings)
            release_free_heap()
        except Exception as exc:
            log.exception("model loading failed")
            self.load_error = f"{type(exc).__name__}: {exc}"
            return
        self.analyzer = analyzer
        self.model_version = analyzer.model.version
        self.batcher = Batcher(
            self._run_batch,
            max_batch_size=self.settings.max_batch_size,
            max_wait_ms=self.settings.max_wait_ms,
            max_queue=self.settings.max_queue,
            on_batch=self.metrics.batch_size.observe,
            more_coming=lambda: self._decoding > 0,
            name="model",
        )
        self.batcher.start()
        self.ready = True
        self.metrics.ready.set(1)
        log.info(
            "ready in %.1fs: model %s %s, detector %s, device %s, backend %s",
            time.perf_counter() - start,
            self.meta.name,
            self.model_version,
            self.detector,
            self.device,
            self.backend,
        )

    def _run_batch(self, jobs: Sequence[Job]) -> list[JobResult]:
        assert self.analyzer is not None
        results = self.analyzer.run_batch(jobs)
        if results:
            self.metrics.stage_latency.labels(stage="detect").observe(results[0].detect_ms / 1000.0)
            self.metrics.stage_latency.labels(stage="classify").observe(results[0].classify_ms / 1000.0)
        self.metrics.batch_faces.observe(sum(len(r.faces) for r in results))
        return results

    async def decode(self, data: bytes, formats: Sequence[str] = SUPPORTED_FORMATS) -> DecodedImage:
        """Decode on the thread pool: Pillow releases the GIL, so decodes overlap each other and the model."""
        fn = partial(
            decode_image,
            data,
            max_pixels=self.settings.max_pixels,
            formats=formats,
            work_size=work_size(self.settings),
        )
        self._decoding += 1
        try:
            image = await asyncio.get_running_loop().run_in_executor(self._decode_pool, fn)
        finally:
            self._decoding -= 1
        self.metrics.stage_latency.labels(stage="decode").observe(image.decode_ms / 1000.0)
        return image

    async def infer(self, job: Job) -> JobResult:
        if self.batcher is None:
            raise NotReady()
        return await self.batcher.submit(job)

    @property
    def classes(self) -> list[str]:
        return self.meta.classes

    def info(self) -> dict[str, Any]:
        s = self.settings
        m = self.meta
        model_precision, detector_precision = self._precisions()
        return {
            "ready": self.ready,
            "classes": m.classes,
            "model": {
                "name": m.name,
                "version": self.model_version,
                "arch": m.arch,
                "stem": m.stem,
                "input_size": m.input_size,
                "crop": m.crop.model_dump(),
                "metrics": m.metrics,
                "data_fingerprint": m.data_fingerprint,
                "precision": model_precision,
            },
            "detector": {
                "kind": self.detector,
                "input_size": detector_input(self.detector, s.detector_input_size),
                "score_threshold": s.score_threshold,
                "min_face_size": s.min_face_size,
                "max_faces": s.max_faces,
                "precision": detector_precision,
            },
            "device": self.device,
            "backend": self.backend,
            "flip_tta": s.flip_tta_on(self.device),
            "prior_shift": m.prior_shift if s.prior_shift else {},
            "limits": s.limits(),
            "auth": s.auth_enabled,
        }

    def _precisions(self) -> tuple[str | None, str | None]:
        """The classifier's and the SSD's precision once the models are loaded (else None)."""
        from server.pipeline.backend import precision_of
        from server.pipeline.detect import SSDFaceDetector
        from server.pipeline.roi import ProposedRegions

        if self.analyzer is None:
            return None, None
        pipeline = self.analyzer.pipeline
        detector = pipeline.detector
        if isinstance(detector, ProposedRegions):  # distilled or BlazeFace: the whole-image network's
            detector = detector.proposer
        ssd = precision_of(detector.model) if isinstance(detector, SSDFaceDetector) else None
        return precision_of(pipeline.classifier.model), ssd

    async def close(self) -> None:
        """Graceful stop: streams get 1001, queued work finishes, then the pools go."""
        self.ready = False
        self.metrics.ready.set(0)
        timeout = self.settings.shutdown_timeout_s
        await self.streams.close_all(1001, "server shutting down", timeout)
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        if self.batcher is not None:
            await self.batcher.stop(timeout)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
