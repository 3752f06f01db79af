"""``EmotionAnalyzer``: load the detector and the classifier once, then analyze images in-process.

It owns the models (:class:`server.pipeline.runner.Pipeline`); the server wraps the same object
(its batcher calls :meth:`EmotionAnalyzer.run_batch`). Options are resolved and replies encoded
by the server's own modules (:mod:`server.api.options`, :mod:`server.api.replies`), so a library
call and ``POST /v1/predict`` give the same faces, boxes and scores for the same bytes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import torch
from PIL import Image
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from server.api.options import resolve_options
from server.api.replies import predict_response
from server.config import Settings
from server.pipeline.decode import SUPPORTED_FORMATS, DecodedImage, DecodeError, decode_image, to_rgb
from server.pipeline.runner import Job, JobResult, PredictOptions, build_pipeline, work_size
from shared.protocol import FaceOptions, ModelRef, PredictResponse

#: Array inputs: ``"rgb"`` (PIL, imageio, scikit-image, matplotlib) or ``"bgr"`` (OpenCV's ``imread``).
ChannelOrder: TypeAlias = Literal["rgb", "bgr"]
#: A file path, encoded image bytes (JPEG/PNG/WebP), a PIL image, or an HxW / HxWx3 / HxWx4 uint8 array.
ImageInput: TypeAlias = "str | Path | bytes | bytearray | memoryview | Image.Image | np.ndarray"


def _array_to_tensor(arr: np.ndarray, channels: ChannelOrder) -> torch.Tensor:
    if arr.dtype != np.uint8:
        raise DecodeError(f"arrays must be uint8 (0-255), not {arr.dtype}; e.g. (img * 255).astype(np.uint8)")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[:, :, :3]  # alpha is dropped
        if channels == "bgr":
            arr = arr[:, :, ::-1]
    else:
        raise DecodeError(f"expected an HxW, HxWx3 or HxWx4 array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DecodeError("image has no pixels")
    return torch.from_numpy(np.array(arr, order="C")).permute(2, 0, 1)  # a copy: the caller keeps theirs


def to_decoded(
    image: Any,
    channels: ChannelOrder = "rgb",
    max_pixels: int = 40_000_000,
    work: tuple[int, int] | None = None,
) -> DecodedImage:
    """Any accepted input -> the pipeline's (3, H, W) uint8 RGB tensor.

    Paths and bytes go through the server's decoder (format sniffed from the bytes, EXIF
    orientation applied, pixel limit checked before decoding, a large JPEG decoded reduced to
    ``work`` as the server does); ``channels`` applies to arrays only. Raises a
    :class:`server.pipeline.decode.DecodeError` subclass on bad input.
    """
    start = time.perf_counter()
    if channels not in ("rgb", "bgr"):
        raise ValueError(f"channels must be 'rgb' or 'bgr', not {channels!r}")
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"no such image file: {path}")
        image = path.read_bytes()
    if isinstance(image, bytes | bytearray | memoryview):
        return decode_image(bytes(image), max_pixels=max_pixels, formats=SUPPORTED_FORMATS, work_size=work)
    if isinstance(image, Image.Image):
        tensor = _array_to_tensor(np.asarray(to_rgb(image)), "rgb")
    elif isinstance(image, np.ndarray):
        tensor = _array_to_tensor(image, channels)
    else:
        raise TypeError(
            f"cannot analyze a {type(image).__name__}: pass a path, bytes, a PIL image or an array"
        )
    pixels = int(tensor.shape[1]) * int(tensor.shape[2])
    if pixels > max_pixels:
        from server.pipeline.decode import ImageTooLarge

        raise ImageTooLarge(f"image has {pixels} pixels; the limit is {max_pixels}")
    return DecodedImage(tensor=tensor, decode_ms=(time.perf_counter() - start) * 1000.0)


class ArgumentSettings(Settings):
    """The server's settings, from arguments only: a library call does what its arguments say.

    An unknown name is an error (the server ignores unknown ``EMOTION_*`` variables; a misspelt
    keyword argument such as ``max_face=3`` must not be dropped without a word)."""

    model_config = SettingsConfigDict(extra="forbid")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource, *_: Any, **__: Any
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class EmotionAnalyzer:
    """Faces and their emotions, in-process. One instance may be called from several threads at
    once (each call runs its own inference; tests/test_analyzer.py checks 4 threads), though one
    ``analyze_batch`` of many images is faster than many threads of one.

    Keyword options are the server's settings of the same name (``EMOTION_<NAME>``), with the
    same defaults and validation: ``device`` (``auto`` = CUDA when available, else CPU, as the
    server picks), ``detector``, ``detector_input_size``, ``score_threshold``, ``max_faces``,
    ``min_face_size``, ``max_pixels``, ``torch_threads``, ``warmup``. The environment is *not*
    read: a library call does what its arguments say.
    """

    def __init__(self, checkpoint: str | Path | None = None, *, device: str = "auto", **options: Any) -> None:
        # No streams in a library call: no second (region-pass) detector to build and hold.
        values: dict[str, Any] = {"device": device, "warmup": False, "stream_redetect_every": 1, **options}
        if checkpoint is not None:
            values["checkpoint"] = Path(checkpoint)
        self._init(ArgumentSettings(**values))

    @classmethod
    def from_settings(cls, settings: Settings) -> EmotionAnalyzer:
        """The server's constructor: loads both models (slow, so the server calls it on a worker thread)."""
        self = cls.__new__(cls)
        self._init(settings)
        return self

    def _init(self, settings: Settings) -> None:
        self.settings = settings
        self.device = settings.torch_device()
        self.pipeline = build_pipeline(settings, self.device)
        if settings.warmup:
            self.pipeline.warmup()

    # ------------------------------------------------------------------ what the server uses

    @property
    def classes(self) -> list[str]:
        return self.pipeline.classifier.classes

    @property
    def model(self) -> ModelRef:
        return ModelRef(name=self.pipeline.classifier.meta.name, version=self.pipeline.classifier.version)

    def options(
        self, max_faces: int | None = None, min_confidence: float | None = None, detect: bool = True
    ) -> PredictOptions:
        """Per-call options resolved against the configured defaults as ``/v1/predict`` resolves
        its query (``max_faces`` 1-100, capped by the configured one; ``min_confidence`` 0-1);
        a value out of range raises a ``ValueError`` (pydantic's) that names it."""
        asked = FaceOptions(max_faces=max_faces, min_confidence=min_confidence, detect=detect)
        return resolve_options(self.settings, asked)

    def run_batch(self, jobs: Sequence[Job]) -> list[JobResult]:
        """One model batch (the server's batcher function): every stage once for all ``jobs``."""
        return self.pipeline.run(jobs)

    def response(self, image: DecodedImage, result: JobResult, started: float) -> PredictResponse:
        """The ``/v1/predict`` reply for one image; ``started`` is the ``perf_counter`` at arrival."""
        return predict_response(image, result, self.classes, self.model, started)

    def decode(self, image: Any, channels: ChannelOrder = "rgb") -> DecodedImage:
        """One input as the pipeline takes it, with this analyzer's limits (see :func:`to_decoded`)."""
        return to_decoded(image, channels, self.settings.max_pixels, work_size(self.settings))

    def warmup(self) -> None:
        self.pipeline.warmup()

    # ------------------------------------------------------------------ the library calls

    def analyze(
        self,
        image: ImageInput,
        *,
        channels: ChannelOrder = "rgb",
        max_faces: int | None = None,
        min_confidence: float | None = None,
        detect: bool = True,
    ) -> PredictResponse:
        """Every face in one image, largest clear face first (area x confidence); see
        :data:`ImageInput` for what ``image`` may be.

        ``channels`` says how to read a numpy array: ``"rgb"`` or ``"bgr"`` (OpenCV frames); any other
        value raises ``ValueError``. ``detect=False`` treats the whole image as one already-cropped face.
        """
        return self.analyze_batch(
            [image], channels=channels, max_faces=max_faces, min_confidence=min_confidence, detect=detect
        )[0]

    def analyze_batch(
        self,
        images: Sequence[ImageInput],
        *,
        channels: ChannelOrder = "rgb",
        max_faces: int | None = None,
        min_confidence: float | None = None,
        detect: bool = True,
    ) -> list[PredictResponse]:
        """Several images in one model batch (faster per image, on a GPU especially); all must decode.

        ``images`` is a list (or an NxHxWxC array); one image (a path, bytes, ...) raises ``TypeError``.
        """
        if isinstance(images, str | Path | bytes | bytearray | memoryview | Image.Image) or (
            isinstance(images, np.ndarray) and images.ndim != 4
        ):
            raise TypeError(
                f"analyze_batch takes a list of images, not one {type(images).__name__}: use analyze()"
            )
        started = time.perf_counter()
        opts = self.options(max_faces, min_confidence, detect)
        decoded = [self.decode(img, channels) for img in images]
        if not decoded:
            return []
        results = self.run_batch([Job(d, opts) for d in decoded])
        return [self.response(d, r, started) for d, r in zip(decoded, results, strict=True)]

    def __repr__(self) -> str:
        return f"EmotionAnalyzer(model={self.model.name} {self.model.version}, device={self.device})"
