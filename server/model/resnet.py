"""ResNet18 adapted to small grayscale face crops.

torchvision's ResNet18 downsamples 32x before the pooling head (7x7 conv stride 2 +
max-pool), which would leave a 48x48 FER2013 face as a 2x2 map after the stem.
The stem is therefore replaced by a 3x3 convolution on one channel; the variants
trade accuracy for compute:

* ``s1``      3x3 stride 1, no max-pool: layer1 runs at 48x48 (~0.56 GMAC/face).
* ``s1-pool`` 3x3 stride 1 then the 3x3/2 max-pool: layer1 at 24x24 (~4x cheaper).
* ``s2``      3x3 stride 2, no max-pool: layer1 at 24x24, cheapest stem.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock

STEMS: tuple[str, ...] = ("s1", "s1-pool", "s2")


def build_resnet18(num_classes: int, in_channels: int = 1, stem: str = "s1-pool") -> nn.Module:
    """Randomly initialised ResNet18 with a small-image stem (no weights are downloaded)."""
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; expected one of {STEMS}")
    model: nn.Module = resnet18(weights=None, num_classes=num_classes)
    stride = 2 if stem == "s2" else 1
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=stride, padding=1, bias=False)
    if stem != "s1-pool":
        model.maxpool = nn.Identity()
    # Zero-init the last BN of each residual branch: each block starts as identity,
    # which trains faster from scratch (Goyal et al., 2017).
    for m in model.modules():
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)
    return model
