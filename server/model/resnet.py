"""ResNet18 adapted to small grayscale face crops.

torchvision's ResNet18 downsamples 32x before the pooling head (7x7 conv stride 2 +
max-pool), which would leave a 48x48 FER2013 face as a 2x2 map after the stem.
The stem is therefore replaced by a 3x3 convolution on one channel; the variants
trade accuracy for compute:

* ``s1``      3x3 stride 1, no max-pool: layer1 runs at 48x48 (~0.56 GMAC/face).
* ``s1-pool`` 3x3 stride 1 then the 3x3/2 max-pool: layer1 at 24x24 (~4x cheaper).
* ``s2``      3x3 stride 2, no max-pool: layer1 at 24x24, cheapest stem.

The network is torchvision's ResNet18 layer for layer (the same module names, parameters, forward and
random initialisation; ``tests/test_checkpoint.py`` holds it to torchvision's), written out here so
that the server never imports torchvision: importing it loads ``torch._dynamo`` and triton, +165 MiB
of idle RSS for nothing the server runs (docs/benchmarks.md, "Idle memory").
"""

from __future__ import annotations

import torch
from torch import nn

STEMS: tuple[str, ...] = ("s1", "s1-pool", "s2")


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: conv-BN-ReLU-conv-BN plus the (projected) input, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)  # type: ignore[no-any-return]


class ResNet(nn.Module):
    """torchvision's ``ResNet`` with ``BasicBlock`` and layers (2, 2, 2, 2): ResNet18."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))  # type: ignore[no-any-return]


def build_resnet18(num_classes: int, in_channels: int = 1, stem: str = "s1-pool") -> nn.Module:
    """Randomly initialised ResNet18 with a small-image stem (no weights are downloaded)."""
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; expected one of {STEMS}")
    model = ResNet(num_classes)
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
