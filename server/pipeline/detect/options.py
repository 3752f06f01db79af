"""What every detector is configured with, and the registry of detector names.

:data:`DetectorName` is the one list of backends: ``Settings.detector``, the
``emotion-server --detector`` choices and :func:`~server.pipeline.detect.build_detector`
all read it, so a new backend is named here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

#: The detector backends, by the name settings and the command line use.
DetectorName = Literal["distilled", "ssd", "haar", "blazeface"]
DETECTORS: tuple[str, ...] = get_args(DetectorName)
#: What settings accept: a backend, or ``auto`` (:func:`resolve_detector`).
DetectorChoice = Literal["auto", "distilled", "ssd", "haar", "blazeface"]
DETECTOR_CHOICES: tuple[str, ...] = get_args(DetectorChoice)


def resolve_detector(choice: str, backend: str) -> DetectorName:
    """``auto``: BlazeFace proposals where OpenVINO runs the models (the CPU), else the SSD (GPUs,
    the torch reference path: BlazeFace has no torch port). Other names are returned as they are.
    The default stays ``ssd``: docs/benchmarks.md, "BlazeFace proposals", has why."""
    if choice == "auto":
        return "blazeface" if backend == "openvino" else "ssd"
    if choice not in DETECTORS:
        raise ValueError(f"unknown detector {choice!r}; expected one of {DETECTOR_CHOICES}")
    return choice  # type: ignore[return-value]


def detector_input(kind: str, ssd_input: tuple[int, int]) -> str:
    """The network input(s) of detector ``kind``, WxH, for /v1/info: the SSD's is a setting;
    BlazeFace's are fixed (the short-range 128x128, then the back model at 320x256 for landscape
    images, 256x320 for portrait, 320x320 near square)."""
    if kind == "blazeface":
        return "128x128+320x256 (SSD 96x96 per face)"
    if kind == "distilled":
        return "{}x{} (SSD 96x96 per doubtful face)".format(*ssd_input)
    if kind == "haar":
        return "image"
    return "{}x{}".format(*ssd_input)


@dataclass(frozen=True)
class DetectorOptions:
    """The knobs shared by every backend, validated once here.

    ``score_threshold`` and ``max_faces`` are defaults that ``detect()`` can override per
    call; ``min_face_size`` is the smallest box side kept, in original-image pixels;
    ``input_size`` is the SSD input (width, height) every frame is resized to (the Haar
    cascade scans the image at its own resolution and ignores it).
    """

    score_threshold: float = 0.5
    max_faces: int = 20
    min_face_size: float = 20
    input_size: tuple[int, int] = (300, 300)

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if self.max_faces < 1 or self.min_face_size < 0:
            raise ValueError("max_faces must be >= 1 and min_face_size >= 0")
        if len(self.input_size) != 2 or min(self.input_size) < 32:
            raise ValueError(f"input_size must be (width, height), each >= 32, got {self.input_size}")
        # Normalised types, so float/int lookalikes from settings compare and hash alike.
        object.__setattr__(self, "score_threshold", float(self.score_threshold))
        object.__setattr__(self, "max_faces", int(self.max_faces))
        object.__setattr__(self, "min_face_size", float(self.min_face_size))
        object.__setattr__(self, "input_size", (int(self.input_size[0]), int(self.input_size[1])))

    def per_call(self, min_confidence: float | None, max_faces: int | None) -> tuple[float, int]:
        """The (threshold, face limit) of one ``detect()`` call: its overrides, else these defaults."""
        threshold = self.score_threshold if min_confidence is None else float(min_confidence)
        return threshold, self.max_faces if max_faces is None else int(max_faces)
