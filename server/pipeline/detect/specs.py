"""The SSD's prior boxes and its detection output, as the deploy prototxt declares them.

The ``PriorBox`` and ``DetectionOutput`` layers hold every number the decoding needs, so
they are read from the prototxt rather than restated here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.pipeline.detect.prototxt import prototxt_layers

#: Caffe names of the head sources, in prior-box order.
HEAD_SOURCES = ("conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2")


@dataclass(frozen=True)
class PriorSpec:
    """One ``PriorBox`` layer; box order per location follows OpenCV: min, sqrt(min*max), then ratios."""

    min_size: float
    max_size: float | None
    aspect_ratios: tuple[float, ...]  # excluding 1, flipped ratios included, OpenCV order
    step: float
    offset: float
    variance: tuple[float, float, float, float]
    clip: bool

    @property
    def box_sizes(self) -> list[tuple[float, float]]:
        sizes = [(self.min_size, self.min_size)]
        if self.max_size is not None:
            s = math.sqrt(self.min_size * self.max_size)
            sizes.append((s, s))
        sizes += [(self.min_size * math.sqrt(r), self.min_size / math.sqrt(r)) for r in self.aspect_ratios]
        return sizes

    @classmethod
    def from_layer(cls, layer: dict[str, list[Any]]) -> PriorSpec:
        p = layer["prior_box_param"][0]
        flip = bool(p.get("flip", [True])[0])
        ratios: list[float] = []
        for r in map(float, p.get("aspect_ratio", [])):
            if any(abs(r - q) < 1e-6 for q in [1.0, *ratios]):
                continue
            ratios.append(r)
            if flip:
                ratios.append(1.0 / r)
        var = [float(v) for v in p.get("variance", [0.1])]
        if len(var) == 1:
            var *= 4
        if "step" not in p:
            raise ValueError("PriorBox without an explicit step is not supported")
        return cls(
            min_size=float(p["min_size"][0]),
            max_size=float(p["max_size"][0]) if "max_size" in p else None,
            aspect_ratios=tuple(ratios),
            step=float(p["step"][0]),
            offset=float(p.get("offset", [0.5])[0]),
            variance=(var[0], var[1], var[2], var[3]),
            clip=bool(p.get("clip", [False])[0]),
        )


@dataclass(frozen=True)
class OutputSpec:
    """The ``DetectionOutput`` layer's parameters (single foreground class, shared locations)."""

    nms_threshold: float
    top_k: int
    keep_top_k: int
    confidence_threshold: float

    def score_floor(self, threshold: float) -> float:
        """Candidates score above this: the caller's threshold or the layer's own, the higher."""
        return max(threshold, self.confidence_threshold)

    @classmethod
    def from_layer(cls, layer: dict[str, list[Any]]) -> OutputSpec:
        p = layer["detection_output_param"][0]
        nms = p["nms_param"][0]
        if p.get("code_type", ["CORNER"])[0] != "CENTER_SIZE" or not p.get("share_location", [True])[0]:
            raise ValueError("only CENTER_SIZE box coding with shared locations is supported")
        if p.get("variance_encoded_in_target", [False])[0] or p.get("num_classes", [2])[0] != 2:
            raise ValueError("only two-class models with variances in the priors are supported")
        return cls(
            nms_threshold=float(nms["nms_threshold"][0]),
            top_k=int(nms.get("top_k", [-1])[0]),
            keep_top_k=int(p.get("keep_top_k", [-1])[0]),
            confidence_threshold=float(p.get("confidence_threshold", [0.0])[0]),
        )


def read_specs(prototxt: Path) -> tuple[list[PriorSpec], OutputSpec]:
    """The six PriorBox layers (in head order) and the DetectionOutput layer of ``prototxt``."""
    layers = prototxt_layers(prototxt)
    priors = [PriorSpec.from_layer(layers[f"{src}_mbox_priorbox"]) for src in HEAD_SOURCES]
    out = next(layer for layer in layers.values() if layer["type"][0] == "DetectionOutput")
    return priors, OutputSpec.from_layer(out)
