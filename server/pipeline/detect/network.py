"""The res10 SSD network in torch, layer for layer as ``deploy.prototxt.txt`` declares it.

Weights come folded from Caffe (:mod:`server.pipeline.detect.fold`): every BatchNorm+Scale
pair is either inside a convolution's weights or a :class:`ChannelAffine`.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from server.pipeline.detect.layouts import LAYOUTS


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
        out: torch.Tensor = x + self.conv2(F.relu(self.conv1(x), inplace=True))
        return out


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


class Res10SSD(nn.Module):
    """The res10 SSD network: (B, 3, H, W) mean-subtracted BGR float -> per-prior loc and logits.

    Layer shapes mirror ``deploy.prototxt.txt``; any input size works (the priors
    depend on it, see :func:`~server.pipeline.detect.priors.make_priors`).

    ``width`` scales every channel count (1.0: the Caffe network; 0.5: the distilled half-width
    detector, ``training.distill_ssd``); the priors, and so the outputs' meaning, do not change.

    ``layout`` decides the padding of ``conv8_2`` and ``conv9_2``, the only difference:
    ``"deploy"`` pads them by 1, as ``deploy.prototxt.txt`` does, which makes 5x5 maps at
    300x300 while their PriorBox steps (100, 300) describe the 3x3 and 1x1 maps of
    SSD300; every cell then decodes against a prior one or two steps away from what it
    sees, and cells of the padded ring, never trained, fire on nothing. ``"trained"``
    (unpadded) computes exactly the inner cells of the deploy maps and pairs each with
    the prior its steps imply. Measured evidence and the effect on real photos are in
    ``docs/detection.md`` ("Phantom faces").
    """

    def __init__(
        self, anchors: tuple[int, ...] = (4, 6, 6, 6, 4, 4), layout: str = "trained", width: float = 1.0
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if not 0.0 < width <= 1.0:
            raise ValueError(f"width must be in (0, 1], got {width}")
        self.layout = layout
        self.width = width
        tail_pad = 0 if layout == "trained" else 1

        def c(n: int) -> int:  # every channel count scaled, as a distilled thinner network has them
            return max(8, round(n * width))

        self.data_affine = ChannelAffine(3)
        self.conv1 = _conv(3, c(32), 7, 2, 3)
        self.block64 = ResBlock(c(32))
        self.block128 = PreActBlock(c(32), c(128), c(128), 2)
        self.block256 = PreActBlock(c(128), c(256), c(256), 2)
        self.block512 = PreActBlock(c(256), c(128), c(256), 1, dilation=2)
        self.last_affine = ChannelAffine(c(256))
        self.extra = nn.ModuleDict(
            {
                "conv6_1": _conv(c(256), c(128), 1),
                "conv6_2": _conv(c(128), c(256), 3, 2, 1),
                "conv7_1": _conv(c(256), c(64), 1),
                "conv7_2": _conv(c(64), c(128), 3, 2, 1),
                "conv8_1": _conv(c(128), c(64), 1),
                "conv8_2": _conv(c(64), c(128), 3, 1, tail_pad),
                "conv9_1": _conv(c(128), c(64), 1),
                "conv9_2": _conv(c(64), c(128), 3, 1, tail_pad),
            }
        )
        self.norm_scale = nn.Parameter(torch.full((c(128),), 20.0))
        channels = tuple(c(n) for n in (128, 256, 256, 128, 128, 128))
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
            conv = cast(nn.Conv2d, self.extra[f"conv{i}_2"])
            pad = cast(tuple[int, int], conv.padding)[0]  # _conv pads by a number, never "same"
            if min(feats[-1].shape[-2:]) + 2 * pad < conv.kernel_size[0]:
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


class BlobInput(nn.Module):
    """(B, H, W, 3) uint8 RGB -> ``net`` on what it was trained on: ``cv2.dnn.blobFromImage``'s
    (B, 3, H, W) BGR float minus ``mean`` (channels_last memory, as the CPU path wants).

    In the network rather than before it so that a compiled build does it too: OpenVINO then takes
    the uint8 pixels (a quarter of the bytes, no NCHW copy) and converts them as preprocessing
    steps (:meth:`openvino_preprocessing`), ~0.9 ms less per 300x300 frame than torch ops before
    the call (docs/benchmarks.md). The same ops as before, so the numbers are unchanged.
    """

    def __init__(self, net: nn.Module, mean: tuple[float, float, float]) -> None:
        super().__init__()
        self.net = net
        self.mean: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)

    def extra_repr(self) -> str:  # part of the network's identity (backend.module_key)
        return f"mean={tuple(self.mean.tolist())}"

    def blob(self, x: torch.Tensor) -> torch.Tensor:
        """What ``net`` sees for pixels ``x``."""
        return (x.flip(-1).float() - self.mean).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> Any:
        return self.net(self.blob(x))

    def openvino_preprocessing(self, ppp: Any) -> None:
        """:meth:`blob` as OpenVINO preprocessing steps on ``net``'s converted model (a
        ``PrePostProcessor``): the CPU plugin fuses them into the input, where the same ops traced
        from torch run as separate nodes, slower than torch itself."""
        import openvino as ov

        ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
        ppp.input().model().set_layout(ov.Layout("NCHW"))
        ppp.input().preprocess().convert_element_type(ov.Type.f32).reverse_channels().mean(self.mean.tolist())
