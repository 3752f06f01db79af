"""One batch of decoded images -> faces with emotion probabilities.

The stages (detect -> crop -> classify) each run once per batch, whatever mix of
REST requests and stream frames the batch holds, which is where batching pays.
Called on the batcher's worker thread; nothing here touches the event loop. It returns
domain results (:class:`JobResult`, :class:`Face`); :mod:`server.api.replies` turns them into
the wire replies.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from server.pipeline.classify import EmotionClassifier
from server.pipeline.crop import WHOLE_IMAGE, crop_faces
from server.pipeline.decode import DecodedImage
from server.pipeline.roi import ROI_INPUT, ProposedRegions, RegionDetector
from server.pipeline.types import FaceDetector

if TYPE_CHECKING:
    from server.config import Settings


#: The distilled SSD's proposal threshold (EMOTION_DETECTOR=distilled): a recall stage, as the original
#: SSD's region pass confirms each proposal at the caller's threshold. On 1,230 held-out real photos
#: (epoch-7 weights, docs/detection.md) proposals at 0.5 / 0.3 / 0.15 left 9 / 8 / 5 photos without a
#: face, the original SSD alone 5. With the shipped weights and DISTILLED_TRUST, 0.3 scored as 0.15 there
#: but found 82% / 24% of 40 / 32 px faces in bench/smallest_face.py against 96% / 85%.
DISTILLED_PROPOSAL_FLOOR = 0.15
#: Proposals the distilled SSD scores at least this are kept in its own framing, unconfirmed: on the
#: 1,230 held-out photos trusting >= 0.9 (or 0.98) gave the answers of confirming every proposal
#: (83.66%, faces 0/1/2+ 4/1,226/0), and >= 0.5 three photos with a phantom second face; a face in
#: a webcam frame mostly scores > 0.9, so most frames skip the region pass (docs/detection.md).
DISTILLED_TRUST = 0.9


@dataclass(frozen=True)
class PredictOptions:
    """Which faces one image reports; a request's are resolved against the settings by
    :func:`server.api.options.resolve_options` (no defaults here, so none can drift from them)."""

    max_faces: int
    min_confidence: float
    detect: bool = True


@dataclass
class Job:
    image: DecodedImage
    options: PredictOptions
    #: (K, 4) ``x1, y1, x2, y2`` in the image's pixels: detect only inside these (streams,
    #: :mod:`server.pipeline.roi`); None: the whole image.
    regions: torch.Tensor | None = None


@dataclass
class Face:
    """One face, before :mod:`server.api.replies` encodes it (the stream adds a track id and may
    smooth ``probs`` first)."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
    score: float
    probs: np.ndarray  # (C,) in classifier class order

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])

    @property
    def rank(self) -> float:
        """Reply order key, highest first: box area weighted by detector confidence.

        The face a user means is the largest one; weighting by confidence keeps a
        doubtful detection (score 0.5-0.7) behind a clear face unless it is clearly
        bigger (by more than the score ratio). See docs/protocol.md, "Face order".
        """
        return self.area * max(self.score, 0.0)


@dataclass
class JobResult:
    faces: list[Face]  # by Face.rank: largest (confidence-weighted) first
    detect_ms: float
    classify_ms: float


class Pipeline:
    """Holds the detector and the classifier; ``run`` is the batcher's batch function."""

    def __init__(
        self,
        classifier: EmotionClassifier,
        detector: FaceDetector,
        device: str | torch.device,
        region_detector: RegionDetector | None = None,
    ) -> None:
        self.classifier = classifier
        self.detector = detector
        self.device = torch.device(device)
        #: Runs jobs that carry ``regions``; without it they are detected whole.
        self.region_detector = region_detector

    def _detect(
        self, images: list[torch.Tensor], jobs: Sequence[Job]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Boxes and scores per image: one detector call per kind of pass (whole image, regions) and per
        (min_confidence, max_faces) in the batch. Those two steer what the detector proposes and checks
        (the distilled detector's proposals and region passes), so a request's faces must not depend on
        the limits of the requests that happen to share its batch."""
        out: list[tuple[torch.Tensor, torch.Tensor]] = [(torch.zeros((0, 4)), torch.zeros(0))] * len(jobs)
        detect = [i for i, job in enumerate(jobs) if job.options.detect]
        roi = self.region_detector
        in_regions = [i for i in detect if roi is not None and jobs[i].regions is not None]
        full = [i for i in detect if i not in in_regions]
        for kind in (full, in_regions):
            alike: dict[tuple[float, int], list[int]] = {}
            for i in kind:
                alike.setdefault((jobs[i].options.min_confidence, jobs[i].options.max_faces), []).append(i)
            for (min_confidence, max_faces), want in alike.items():
                if roi is not None and kind is in_regions:
                    regions = [self._in_tensor_pixels(jobs[i]) for i in want]
                    dets = roi.detect([images[i] for i in want], regions, min_confidence, max_faces)
                else:
                    dets = self.detector.detect([images[i] for i in want], min_confidence, max_faces)
                for i, det in zip(want, dets, strict=True):
                    # scores come sorted, highest first
                    keep = (det.scores >= min_confidence).nonzero().flatten()[:max_faces]
                    out[i] = (det.boxes[keep].float(), det.scores[keep].float())
        for i, job in enumerate(jobs):
            if not job.options.detect:
                _, height, width = job.image.tensor.shape  # the tensor's pixels; run() maps them back
                whole = torch.tensor([[0.0, 0.0, float(width), float(height)]])
                out[i] = (whole, torch.ones(1))
        return out

    @staticmethod
    def _in_tensor_pixels(job: Job) -> torch.Tensor:
        """The job's regions (image pixels) in the pixels of its tensor, which may be reduced."""
        assert job.regions is not None
        return job.image.in_tensor_pixels(job.regions.float())

    def _crops(
        self, images: list[torch.Tensor], boxes: list[torch.Tensor], jobs: Sequence[Job]
    ) -> torch.Tensor:
        """(sum K, 1, S, S) crops in job order; detected faces use the checkpoint's framing."""
        size = self.classifier.input_size
        groups = [
            [i for i, j in enumerate(jobs) if j.options.detect],
            [i for i, j in enumerate(jobs) if not j.options.detect],
        ]
        specs = [self.classifier.meta.crop, WHOLE_IMAGE]
        parts: dict[int, torch.Tensor] = {}
        for idx, spec in zip(groups, specs, strict=True):
            idx = [i for i in idx if len(boxes[i])]
            if not idx:
                continue
            crops = crop_faces(
                [images[i] for i in idx], [boxes[i].to(images[i].device) for i in idx], spec=spec, size=size
            )
            for i, chunk in zip(idx, crops.split([len(boxes[i]) for i in idx]), strict=True):
                parts[i] = chunk
        ordered = [parts[i] for i in range(len(jobs)) if i in parts]
        return torch.cat(ordered) if ordered else torch.zeros((0, 1, size, size))

    @torch.inference_mode()
    def run(self, jobs: Sequence[Job]) -> list[JobResult]:
        t0 = time.perf_counter()
        images = [job.image.tensor.to(self.device, non_blocking=True) for job in jobs]
        dets = self._detect(images, jobs)
        t1 = time.perf_counter()
        boxes = [b for b, _ in dets]
        probs = self.classifier.predict(self._crops(images, boxes, jobs)).numpy()
        t2 = time.perf_counter()
        detect_ms, classify_ms = (t1 - t0) * 1000.0, (t2 - t1) * 1000.0
        results: list[JobResult] = []
        offset = 0
        for job, (b, s) in zip(jobs, dets, strict=True):
            faces = []
            sx, sy = job.image.scale  # an image decoded reduced: boxes back in its own pixels
            for n, (x1, y1, x2, y2) in enumerate(b.cpu().tolist()):
                box = (x1 * sx, y1 * sy, x2 * sx, y2 * sy)
                faces.append(Face(box=box, score=float(s[n]), probs=probs[offset + n]))
            offset += len(b)
            faces.sort(key=lambda f: f.rank, reverse=True)  # stable: equal keys keep score order
            results.append(JobResult(faces, detect_ms, classify_ms))
        return results

    def warmup(self) -> None:
        """Dummy batches through both models (both crop paths), so the first request is not slow."""
        rng = np.random.default_rng(0)
        noise = torch.from_numpy(rng.integers(0, 256, (3, 480, 640), dtype=np.uint8))
        image = DecodedImage(tensor=noise, decode_ms=0.0)
        any_box = PredictOptions(max_faces=4, min_confidence=0.0)  # exercise the crop path too
        whole = PredictOptions(max_faces=1, min_confidence=0.0, detect=False)
        jobs = [Job(image, any_box), Job(image, whole)]
        if self.region_detector is not None:
            jobs.append(Job(image, any_box, regions=torch.tensor([[100.0, 100.0, 260.0, 260.0]])))
        self.run(jobs)
        self.run([Job(image, whole)])  # batches of one too: the CPU backend builds them apart


def build_pipeline(settings: Settings, device: str) -> Pipeline:
    """Load both models on the configured backend (slow). :class:`emotion_service.EmotionAnalyzer`
    is built on this, and the server on the analyzer."""
    from server.pipeline.backend import compile_module, resolve_backend
    from server.pipeline.detect import SSDFaceDetector, build_detector, resolve_detector, ssd_int8_build

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    backend = resolve_backend(settings.backend, device)
    classifier = EmotionClassifier(
        settings.checkpoint,
        device,
        backend=backend,
        threads=settings.torch_threads,
        precision=settings.cpu_precision,
        flip_tta=settings.flip_tta_on(device),
        cache_dir=settings.cache_dir,
        prior_shift=settings.prior_shift,
    )
    kind = resolve_detector(settings.detector, backend)
    options = settings.detector_options()
    ssd_args: dict[str, Any] = {"device": device, "cache_dir": settings.cache_dir}
    region = None
    if kind in ("blazeface", "distilled") or (kind == "ssd" and settings.stream_redetect_every > 1):
        # The original SSD at a region's input size: the streams' region passes (server.pipeline.roi),
        # and with BlazeFace or the distilled SSD, what confirms and frames each face they propose.
        region = RegionDetector(build_detector("ssd", replace(options, input_size=ROI_INPUT), **ssd_args))
    detector: FaceDetector
    proposer: FaceDetector | None = None
    if kind == "blazeface":
        assert region is not None
        proposer = build_detector(
            kind, options, device, threads=settings.torch_threads, precision=settings.cpu_precision
        )
        detector = ProposedRegions(proposer, region)
    elif kind == "distilled":
        assert region is not None
        proposer = build_detector(kind, options, ssd_weights=settings.distilled_weights, **ssd_args)
        detector = ProposedRegions(
            proposer, region, DISTILLED_PROPOSAL_FLOOR, keep_unconfirmed=False, trust_above=DISTILLED_TRUST
        )
    else:
        detector = build_detector(kind, options, **ssd_args)
    region_detector = region if settings.stream_redetect_every > 1 else None
    ssds = [detector, proposer] + ([region.detector] if region is not None else [])
    for det in ssds:
        if isinstance(det, SSDFaceDetector):
            w, h = det.input_size
            example = det.preprocess([torch.zeros((3, h, w), dtype=torch.uint8)])
            # Region passes run their int8 build too (2026-12-07): they now check only doubtful faces, and
            # int8 made the three-face frame's round trip 21.3 -> 19.7 ms with the same faces found at
            # 32-120 px (bench/smallest_face.py) and one held-out photo's answer changed (83.58% vs
            # 83.66%): docs/detection.md, "The distilled SSD".
            det.model = compile_module(
                det.model,
                example,
                backend,
                settings.torch_threads,
                settings.cpu_precision,
                settings.cache_dir,
                int8=ssd_int8_build(det.input_size, det.weights),
            )
    return Pipeline(classifier, detector, device, region_detector)


def work_size(settings: Settings) -> tuple[int, int]:
    """The smallest image size the pipeline needs: larger images are decoded reduced to it.

    The detector sees the whole image at its input size; a face it can find (>= ~12 px there)
    keeps >= 48 px, a full classifier crop, when each side stays 4x the detector's input.
    """
    width, height = settings.detector_input_size
    return (4 * width, 4 * height)
