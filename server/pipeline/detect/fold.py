"""Caffe blobs -> the torch :class:`~server.pipeline.detect.network.Res10SSD` state dict.

Each BatchNorm+Scale pair is folded into the convolution before it (in float64, Caffe's
and OpenCV's arithmetic) where there is one, and into a per-channel affine where it
follows a residual sum (those cannot fold into a zero-padded convolution).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from server.pipeline.detect.specs import HEAD_SOURCES

#: Our module name -> Caffe layers: (conv, batchnorm, scale) for convolutions with the
#: BN+Scale that follows them folded in; (None, batchnorm, scale) for the
#: pre-activation BN+Scale pairs that cannot fold into a padded convolution.
_BACKBONE: dict[str, tuple[str | None, str | None, str | None]] = {
    "data_affine": (None, "data_bn", "data_scale"),
    "conv1": ("conv1_h", "conv1_bn_h", "conv1_scale_h"),
    "block64.conv1": ("layer_64_1_conv1_h", "layer_64_1_bn2_h", "layer_64_1_scale2_h"),
    "block64.conv2": ("layer_64_1_conv2_h", None, None),
    "block128.pre": (None, "layer_128_1_bn1_h", "layer_128_1_scale1_h"),
    "block128.conv1": ("layer_128_1_conv1_h", "layer_128_1_bn2", "layer_128_1_scale2"),
    "block128.conv2": ("layer_128_1_conv2", None, None),
    "block128.expand": ("layer_128_1_conv_expand_h", None, None),
    "block256.pre": (None, "layer_256_1_bn1", "layer_256_1_scale1"),
    "block256.conv1": ("layer_256_1_conv1", "layer_256_1_bn2", "layer_256_1_scale2"),
    "block256.conv2": ("layer_256_1_conv2", None, None),
    "block256.expand": ("layer_256_1_conv_expand", None, None),
    "block512.pre": (None, "layer_512_1_bn1", "layer_512_1_scale1"),
    "block512.conv1": ("layer_512_1_conv1_h", "layer_512_1_bn2_h", "layer_512_1_scale2_h"),
    "block512.conv2": ("layer_512_1_conv2_h", None, None),
    "block512.expand": ("layer_512_1_conv_expand_h", None, None),
    "last_affine": (None, "last_bn_h", "last_scale_h"),
    **{
        f"extra.{n}": (f"{n}_h", None, None)
        for n in ("conv6_1", "conv6_2", "conv7_1", "conv7_2", "conv8_1", "conv8_2", "conv9_1", "conv9_2")
    },
}


def bn_eps_from_prototxt(layers: dict[str, dict[str, list[Any]]]) -> dict[str, float]:
    """Each BatchNorm layer's eps from the prototxt (Caffe's default 1e-5 where it says none)."""
    eps: dict[str, float] = {}
    for name, layer in layers.items():
        if layer.get("type", [""])[0] == "BatchNorm":
            param = layer.get("batch_norm_param", [{}])[0]
            eps[name] = float(param.get("eps", [1e-5])[0])
    return eps


def _bn_scale(
    blobs: dict[str, list[np.ndarray]], bn: str, scale: str | None, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (a, b) with BN+Scale(x) == a * x + b, in float64 (Caffe/OpenCV semantics)."""
    mean, var, factor = (b.astype(np.float64).ravel() for b in blobs[bn][:3])
    f = 0.0 if factor[0] == 0 else 1.0 / factor[0]
    a = 1.0 / np.sqrt(var * f + eps)
    b = -a * mean * f
    if scale is not None:
        sc = blobs[scale]
        gamma = sc[0].astype(np.float64).ravel()
        beta = sc[1].astype(np.float64).ravel() if len(sc) > 1 else np.zeros_like(gamma)
        a, b = gamma * a, gamma * b + beta
    return a, b


def convert_caffe(
    blobs: dict[str, list[np.ndarray]], bn_eps: dict[str, float] | None = None
) -> dict[str, torch.Tensor]:
    """Caffe blobs -> :class:`~server.pipeline.detect.network.Res10SSD` state dict (BN folded, float32)."""
    eps = bn_eps or {}
    out: dict[str, np.ndarray] = {}
    for name, (conv, bn, scale) in _BACKBONE.items():
        if conv is None:
            assert bn is not None
            a, b = _bn_scale(blobs, bn, scale, eps.get(bn, 1e-5))
            out[f"{name}.weight"], out[f"{name}.bias"] = a, b
            continue
        w = blobs[conv][0].astype(np.float64)
        bias = blobs[conv][1].astype(np.float64).ravel() if len(blobs[conv]) > 1 else np.zeros(w.shape[0])
        if bn is not None:
            a, b = _bn_scale(blobs, bn, scale, eps.get(bn, 1e-5))
            w, bias = w * a[:, None, None, None], a * bias + b
        out[f"{name}.weight"], out[f"{name}.bias"] = w, bias
    out["norm_scale"] = blobs["conv4_3_norm"][0].astype(np.float64).ravel()
    for i, src in enumerate(HEAD_SOURCES):
        for kind in ("loc", "conf"):
            layer = blobs[f"{src}_mbox_{kind}"]
            out[f"{kind}.{i}.weight"] = layer[0]
            out[f"{kind}.{i}.bias"] = layer[1].ravel()
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in out.items()}
