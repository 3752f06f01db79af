"""OpenCV's res10 300x300 SSD face detector, reimplemented in PyTorch.

Why not just call ``cv2.dnn``: it runs one image at a time on the CPU, while the
server wants batches on whatever device the classifier uses. This module mirrors
the Caffe graph (``deploy.prototxt.txt``) layer for layer and OpenCV's
``blobFromImage``, ``PriorBox`` and ``DetectionOutput`` semantics, so its boxes and
scores match ``cv2.dnn`` (see ``tests/test_detect.py``) while running batched.

One deliberate difference, the default ``layout="trained"``: conv8_2 and conv9_2 run
unpadded, so their maps match their prior steps; the shipped padding makes the phantom
faces described in docs/detection.md. ``layout="deploy"`` is the prototxt as shipped.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from server.pipeline.detect.caffe import HEAD_SOURCES, DetectorFiles, load_converted, prototxt_layers
from server.pipeline.types import Detections

#: blobFromImage(mean=(104, 177, 123)) in BGR order, as the model was trained.
BGR_MEAN = (104.0, 177.0, 123.0)


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
    layers = prototxt_layers(prototxt)
    priors = [PriorSpec.from_layer(layers[f"{src}_mbox_priorbox"]) for src in HEAD_SOURCES]
    out = next(layer for layer in layers.values() if layer["type"][0] == "DetectionOutput")
    return priors, OutputSpec.from_layer(out)


class ChannelAffine(nn.Module):
    """A folded BatchNorm+Scale pair: ``x * weight + bias`` per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))


def _conv(cin: int, cout: int, k: int, stride: int = 1, pad: int = 0, dilation: int = 1) -> nn.Conv2d:
    # Every convolution gets a bias: BN+Scale folding gives the bias-free Caffe ones one.
    return nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation)


class ResBlock(nn.Module):
    """Caffe's ``layer_64_1``: conv-BN-ReLU-conv plus identity (its input is already activated)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv(channels, channels, 3, 1, 1)
        self.conv2 = _conv(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x), inplace=True))


class PreActBlock(nn.Module):
    """Caffe's ``layer_N_1``: BN-Scale-ReLU (``pre``), conv-BN-ReLU-conv, plus a 1x1 projection."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int, dilation: int = 1) -> None:
        super().__init__()
        self.pre = ChannelAffine(cin)
        self.conv1 = _conv(cin, mid, 3, stride, 1)
        self.conv2 = _conv(mid, cout, 3, 1, dilation, dilation)
        self.expand = _conv(cin, cout, 1, stride)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (block output, pre-activated input); the latter feeds the first SSD head."""
        a = F.relu(self.pre(x))
        return self.conv2(F.relu(self.conv1(a), inplace=True)) + self.expand(a), a


#: The two SSD head layouts (see :class:`Res10SSD`).
LAYOUTS = ("trained", "deploy")


class Res10SSD(nn.Module):
    """The res10 SSD network: (B, 3, H, W) mean-subtracted BGR float -> per-prior loc and logits.

    Layer shapes mirror ``deploy.prototxt.txt``; any input size works (the priors
    depend on it, see :func:`make_priors`).

    ``layout`` decides the padding of ``conv8_2`` and ``conv9_2``, the only difference:
    ``"deploy"`` pads them by 1, as ``deploy.prototxt.txt`` does, which makes 5x5 maps at
    300x300 while their PriorBox steps (100, 300) describe the 3x3 and 1x1 maps of
    SSD300; every cell then decodes against a prior one or two steps away from what it
    sees, and cells of the padded ring, never trained, fire on nothing. ``"trained"``
    (unpadded) computes exactly the inner cells of the deploy maps and pairs each with
    the prior its steps imply. Measured evidence and the effect on real photos are in
    ``docs/detection.md`` ("Phantom faces").
    """

    def __init__(self, anchors: tuple[int, ...] = (4, 6, 6, 6, 4, 4), layout: str = "trained") -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.layout = layout
        tail_pad = 0 if layout == "trained" else 1
        self.data_affine = ChannelAffine(3)
        self.conv1 = _conv(3, 32, 7, 2, 3)
        self.block64 = ResBlock(32)
        self.block128 = PreActBlock(32, 128, 128, 2)
        self.block256 = PreActBlock(128, 256, 256, 2)
        self.block512 = PreActBlock(256, 128, 256, 1, dilation=2)
        self.last_affine = ChannelAffine(256)
        self.extra = nn.ModuleDict(
            {
                "conv6_1": _conv(256, 128, 1),
                "conv6_2": _conv(128, 256, 3, 2, 1),
                "conv7_1": _conv(256, 64, 1),
                "conv7_2": _conv(64, 128, 3, 2, 1),
                "conv8_1": _conv(128, 64, 1),
                "conv8_2": _conv(64, 128, 3, 1, tail_pad),
                "conv9_1": _conv(128, 64, 1),
                "conv9_2": _conv(64, 128, 3, 1, tail_pad),
            }
        )
        self.norm_scale = nn.Parameter(torch.full((128,), 20.0))
        channels = (128, 256, 256, 128, 128, 128)
        self.loc = nn.ModuleList(_conv(c, 4 * a, 3, 1, 1) for c, a in zip(channels, anchors, strict=True))
        self.conf = nn.ModuleList(_conv(c, 2 * a, 3, 1, 1) for c, a in zip(channels, anchors, strict=True))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """Returns loc (B, P, 4), logits (B, P, 2) and the six head feature-map sizes."""
        x = F.relu(self.conv1(self.data_affine(x)), inplace=True)
        x = F.max_pool2d(x, 3, 2, ceil_mode=True)  # Caffe pooling rounds the output size up
        x = self.block64(x)
        x, _ = self.block128(x)
        x, c4 = self.block256(x)
        x, _ = self.block512(x)
        feats = [c4, F.relu(self.last_affine(x))]
        for i in (6, 7, 8, 9):
            conv = self.extra[f"conv{i}_2"]
            if min(feats[-1].shape[-2:]) + 2 * conv.padding[0] < conv.kernel_size[0]:
                # Unpadded tail on a small input: the map is empty, and so are its priors.
                feats.append(x.new_zeros((x.shape[0], conv.out_channels, 0, 0)))
                continue
            h = F.relu(self.extra[f"conv{i}_1"](feats[-1]), inplace=True)
            feats.append(F.relu(conv(h), inplace=True))
        # Normalize layer (across_spatial=false): x / sqrt(sum_c x^2 + eps) * scale.
        feats[0] = (
            c4 * torch.rsqrt(c4.square().sum(1, keepdim=True) + 1e-10) * self.norm_scale.view(1, -1, 1, 1)
        )
        b = x.shape[0]

        def run(heads: nn.ModuleList) -> torch.Tensor:
            return torch.cat(
                [
                    head(f).permute(0, 2, 3, 1).reshape(b, -1) if f.numel() else f.new_zeros((b, 0))
                    for head, f in zip(heads, feats, strict=True)
                ],
                1,
            )

        loc, conf = run(self.loc), run(self.conf)
        return loc.view(b, -1, 4), conf.view(b, -1, 2), [(int(f.shape[2]), int(f.shape[3])) for f in feats]


def prototxt_for_layout(text: str, layout: str) -> str:
    """``deploy.prototxt.txt`` text rewritten for ``layout``: ``"trained"`` sets the padding of
    ``conv8_2_h`` and ``conv9_2_h`` to 0, so ``cv2.dnn`` computes the network this module runs
    (for parity checks); ``"deploy"`` returns the text unchanged."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "deploy":
        return text
    for name in ("conv8_2_h", "conv9_2_h"):
        pattern = re.compile(r'(name:\s*"' + name + r'"\s.*?convolution_param\s*\{[^}]*?pad:\s*)1\b', re.S)
        text, n = pattern.subn(r"\g<1>0", text, count=1)
        if n != 1:
            raise ValueError(f"no padded {name} convolution in the prototxt")
    return text


def make_priors(
    specs: list[PriorSpec], feature_sizes: list[tuple[int, int]], image_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV ``PriorBox`` outputs: normalised (P, 4) corner boxes and (P, 4) variances."""
    img_h, img_w = image_hw
    boxes, variances = [], []
    for spec, (fh, fw) in zip(specs, feature_sizes, strict=True):
        sizes = torch.tensor(spec.box_sizes, dtype=torch.float32)  # (A, 2) as w, h
        # Computed in float32 like OpenCV, so boxes agree to the last bit where it matters.
        cy, cx = torch.meshgrid(
            (torch.arange(fh, dtype=torch.float32) + spec.offset) * spec.step,
            (torch.arange(fw, dtype=torch.float32) + spec.offset) * spec.step,
            indexing="ij",
        )
        cx, cy = cx.reshape(-1, 1), cy.reshape(-1, 1)
        half_w, half_h = sizes[:, 0] / 2, sizes[:, 1] / 2
        b = torch.stack(
            [(cx - half_w) / img_w, (cy - half_h) / img_h, (cx + half_w) / img_w, (cy + half_h) / img_h], -1
        )
        b = b.reshape(-1, 4)
        if spec.clip:
            b = b.clamp(0.0, 1.0)
        boxes.append(b)
        variances.append(torch.tensor(spec.variance, dtype=torch.float32).expand(b.shape[0], 4))
    return torch.cat(boxes), torch.cat(variances)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor, variances: torch.Tensor) -> torch.Tensor:
    """CENTER_SIZE decoding of (B, P, 4) offsets against (P, 4) priors.

    Normalised and unclipped, like OpenCV's output (``clip: false`` in the prototxt).
    """
    pw = priors[:, 2] - priors[:, 0]
    ph = priors[:, 3] - priors[:, 1]
    pcx = priors[:, 0] + pw * 0.5
    pcy = priors[:, 1] + ph * 0.5
    cx = variances[:, 0] * loc[..., 0] * pw + pcx
    cy = variances[:, 1] * loc[..., 1] * ph + pcy
    w = torch.exp(variances[:, 2] * loc[..., 2]) * pw
    h = torch.exp(variances[:, 3] * loc[..., 3]) * ph
    return torch.stack([cx - w * 0.5, cy - h * 0.5, cx + w * 0.5, cy + h * 0.5], -1)


class SSDFaceDetector:
    """Batched res10 SSD face detector (the ``"ssd"`` backend).

    ``input_size`` is (width, height) of the network input, like ``cv2.dnn.blobFromImage``:
    every frame is resized to it without preserving aspect ratio, as the model was
    trained. Smaller inputs are faster but miss small faces. ``layout`` is the head layout
    (:class:`Res10SSD`): ``"trained"`` by default; ``"deploy"`` reproduces ``cv2.dnn`` on the
    shipped prototxt, phantom faces included.
    """

    name = "ssd"

    def __init__(
        self,
        files: DetectorFiles,
        device: str | torch.device = "cpu",
        score_threshold: float = 0.5,
        max_faces: int = 20,
        min_face_size: float = 20,
        input_size: tuple[int, int] = (300, 300),
        cache_dir: str | Path | None = None,
        layout: str = "trained",
    ) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        if max_faces < 1 or min_face_size < 0:
            raise ValueError("max_faces must be >= 1 and min_face_size >= 0")
        if len(input_size) != 2 or min(input_size) < 32:
            raise ValueError(f"input_size must be (width, height), each >= 32, got {input_size}")
        self.device = torch.device(device)
        self.score_threshold = float(score_threshold)
        self.max_faces = int(max_faces)
        self.min_face_size = float(min_face_size)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.prior_specs, self.output_spec = read_specs(files.prototxt)
        self.model = Res10SSD(tuple(len(s.box_sizes) for s in self.prior_specs), layout)
        self.model.load_state_dict(load_converted(files, cache_dir))
        self.model = self.model.to(self.device).eval().requires_grad_(False)
        if self.device.type == "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)
        self._mean = torch.tensor(BGR_MEAN, device=self.device).view(1, 3, 1, 1)
        self._priors: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def preprocess(self, images: list[torch.Tensor]) -> torch.Tensor:
        """``cv2.dnn.blobFromImage(bgr, 1.0, input_size, mean)`` for RGB tensors, as one batch.

        The resize must be OpenCV's, bit for bit: the SSD's weaker outputs move with
        single grey-level differences. On the CPU that is ``cv2.resize`` itself, per
        image (a batched resize gains nothing there and costs memory); on other devices
        it is :func:`cv2_resize_linear`, its exact torch port.
        """
        w, h = self.input_size
        if self.device.type == "cpu":
            batch = np.empty((len(images), h, w, 3), np.uint8)
            for k, img in enumerate(images):
                # Zero-copy for decoded frames, which are permuted views of HWC arrays.
                hwc = np.ascontiguousarray(_as_rgb(img).cpu().permute(1, 2, 0).numpy())
                batch[k] = (
                    hwc
                    if hwc.shape[:2] == (h, w)
                    else cv2.resize(hwc, (w, h), interpolation=cv2.INTER_LINEAR)
                )
            nhwc = torch.from_numpy(batch).flip(-1).float() - self._mean.view(3)  # BGR, minus the mean
            return nhwc.permute(0, 3, 1, 2)  # NCHW view of NHWC memory: channels_last, as the model wants
        imgs = [_as_rgb(img).to(self.device, non_blocking=True) for img in images]
        if all(img.shape == imgs[0].shape for img in imgs):
            x = cv2_resize_linear(torch.stack(imgs), self.input_size)
        else:
            x = torch.cat([cv2_resize_linear(img[None], self.input_size) for img in imgs])
        return x.flip(1).float() - self._mean  # RGB -> BGR, then the training mean

    def _prior_boxes(self, feature_sizes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        w, h = self.input_size
        key = (h, w)
        if key not in self._priors:
            boxes, var = make_priors(self.prior_specs, feature_sizes, key)
            self._priors[key] = (boxes.to(self.device), var.to(self.device))
        return self._priors[key]

    @torch.inference_mode()
    def forward_raw(self, blob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network + decoding: normalised (B, P, 4) boxes and (B, P) face probabilities."""
        loc, logits, sizes = self.model(blob)
        priors, variances = self._prior_boxes(sizes)
        return decode_boxes(loc, priors, variances), logits.softmax(-1)[..., 1]

    @torch.inference_mode()
    def detect(
        self, images: list[torch.Tensor], min_confidence: float | None = None, max_faces: int | None = None
    ) -> list[Detections]:
        """Faces in each (3, H, W) uint8 RGB image, in its own pixels (see :class:`Detections`)."""
        if not images:
            return []
        boxes, scores = self.forward_raw(self.preprocess(images))
        threshold = self.score_threshold if min_confidence is None else float(min_confidence)
        limit = self.max_faces if max_faces is None else int(max_faces)
        keep = self._nms(boxes, scores, threshold)
        results = []
        for i, (img, idx) in enumerate(zip(images, keep, strict=True)):
            img_h, img_w = img.shape[-2:]
            scale = torch.tensor([img_w, img_h, img_w, img_h], device=self.device, dtype=torch.float32)
            b = torch.minimum((boxes[i, idx] * scale).clamp_(min=0), scale)
            s = scores[i, idx]
            big = torch.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) >= max(self.min_face_size, 1e-6)
            results.append(Detections(b[big][:limit].contiguous(), s[big][:limit].contiguous()))
        return results

    def _nms(self, boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[torch.Tensor]:
        """OpenCV DetectionOutput selection, batched: per image, candidates with score >
        max(threshold, confidence_threshold), the ``top_k`` best, greedy NMS, then ``keep_top_k``.

        Filtering at the caller's threshold before NMS gives the same surviving boxes as
        OpenCV's NMS at 0.01 followed by a threshold: a box is only ever suppressed by
        higher-scoring ones. Equal scores (flat image regions give many) are ordered by
        prior index, as OpenCV's stable sort does, so even ties resolve identically.
        """
        spec = self.output_spec
        bsz = scores.shape[0]
        img_idx, prior_idx = (scores > max(threshold, spec.confidence_threshold)).nonzero(as_tuple=True)
        cand = scores[img_idx, prior_idx]
        order = cand.sort(descending=True, stable=True).indices
        order = order[img_idx[order].sort(stable=True).indices]  # by image, then score, then prior
        img_idx, prior_idx = img_idx[order], prior_idx[order]
        counts = torch.bincount(img_idx, minlength=bsz)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(img_idx.numel(), device=scores.device) - starts[img_idx]
        if spec.top_k >= 0:
            top = rank < spec.top_k
            img_idx, prior_idx = img_idx[top], prior_idx[top]
        # NMS ranks by the position in that order (unique), not by the raw, tied scores.
        position = -torch.arange(img_idx.numel(), device=scores.device, dtype=torch.float32)
        kept = batched_nms(boxes[img_idx, prior_idx], position, img_idx, spec.nms_threshold)
        kept = kept.sort().values  # back to (image, score) order
        kept_img, kept_prior = img_idx[kept], prior_idx[kept]
        out = []
        for i in range(bsz):
            sel = kept_prior[kept_img == i]
            out.append(sel if spec.keep_top_k < 0 else sel[: spec.keep_top_k])
        return out


_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS


def _linear_taps(src: int, dst: int, clamp_coeffs: bool) -> tuple[torch.Tensor, ...]:
    """OpenCV's fixed-point bilinear taps: (index0, index1, weight0, weight1) per output pixel.

    ``clamp_coeffs`` is the horizontal rule (out-of-range taps become weight 2048 on the
    edge pixel); vertically OpenCV only clamps the row indices.
    """
    f = ((torch.arange(dst, dtype=torch.float64) + 0.5) * (src / dst) - 0.5).float()
    s = torch.floor(f)
    f = f - s
    i = s.long()
    if clamp_coeffs:
        f = torch.where((i < 0) | (i >= src - 1), torch.zeros_like(f), f)
        i = i.clamp(0, src - 1)
    one = 1 << _COEF_BITS
    w0 = torch.round((1 - f) * one).int()  # cvRound: half to even, like torch.round
    w1 = torch.round(f * one).int()
    return i.clamp(0, src - 1), (i + 1).clamp(0, src - 1), w0, w1


def cv2_resize_linear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``cv2.resize(img, size, interpolation=INTER_LINEAR)`` for (B, C, H, W) uint8, bit-exact.

    Reproduces OpenCV's 11-bit fixed-point coefficients, its SIMD vertical pass
    rounding, and its switch to INTER_AREA for exact 2x downscales (x86 builds of
    opencv-python 4.x; checked against 4.14 in the tests). ``size`` is (width, height).
    """
    _, _, h, w = x.shape
    dw, dh = size
    if (w, h) == (dw, dh):
        return x
    if w == 2 * dw and h == 2 * dh:
        s = x.int().unflatten(2, (dh, 2)).unflatten(4, (dw, 2)).sum((3, 5))
        return ((s + 2) >> 2).to(torch.uint8)
    rows, i0, i1, a0, a1, j0, j1, b0, b1 = _resize_plan(w, h, dw, dh, str(x.device))
    xs = x.index_select(2, rows)  # only the source rows the vertical pass reads
    hz = xs.index_select(3, i0).int() * a0 + xs.index_select(3, i1).int() * a1
    r = ((hz.index_select(2, j0) >> 4) * b0 >> 16) + ((hz.index_select(2, j1) >> 4) * b1 >> 16)
    return ((r + 2) >> 2).clamp_(0, 255).to(torch.uint8)


@functools.lru_cache(maxsize=64)
def _resize_plan(w: int, h: int, dw: int, dh: int, device: str) -> tuple[torch.Tensor, ...]:
    i0, i1, a0, a1 = _linear_taps(w, dw, True)
    j0, j1, b0, b1 = _linear_taps(h, dh, False)
    rows = torch.unique(torch.cat([j0, j1]))
    j0, j1 = torch.searchsorted(rows, j0), torch.searchsorted(rows, j1)
    plan = (rows, i0, i1, a0, a1, j0, j1, b0.view(-1, 1), b1.view(-1, 1))
    return tuple(t.to(device) for t in plan)


def _as_rgb(img: torch.Tensor) -> torch.Tensor:
    if (
        img.ndim != 3
        or img.shape[0] not in (1, 3)
        or img.dtype != torch.uint8
        or not img.shape[1] * img.shape[2]
    ):
        raise ValueError(f"expected a (3, H, W) uint8 RGB image tensor, got {tuple(img.shape)} {img.dtype}")
    return img.expand(3, -1, -1) if img.shape[0] == 1 else img
