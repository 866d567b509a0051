"""CIFAR-style ResNets (He et al. 2016, section 4.2): 3 stages of basic blocks with 16/32/64 channels.

Shortcuts that change shape are 1x1 conv + BN projections ("option B"), not the zero-padding identity of
"option A": a projection is an ordinary conv that the structural engine can prune channel by channel,
while a zero-pad shortcut ties channel indices across stages in a way no module records. Identity
shortcuts elsewhere couple the channels of every block of a stage (a residual-add group).
"""
from __future__ import annotations

import torch.nn as nn

from ..errors import ConfigError
from . import register_model

__all__ = ["BasicBlock", "CifarResNet"]


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """``depth = 6n + 2``: a 3x3 stem, three stages of ``n`` basic blocks (stride 1, 2, 2), GAP, linear."""

    def __init__(self, depth=20, num_classes=10, in_channels=1, input_size=28, width=1.0):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ConfigError(f"depth={depth!r} must be 6n+2 (20, 32, 44, 56, 110)")
        if not (isinstance(width, (int, float)) and width > 0):
            raise ConfigError(f"width={width!r} must be a positive number (channel multiplier), e.g. 0.5")
        n = (depth - 2) // 6
        widths = [max(1, int(round(c * width))) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        c = widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(c, w, 2 if (i > 0 and j == 0) else 1))
                c = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, num_classes)
        self.example_input_shape = (in_channels, input_size, input_size)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def _builder(depth):
    def build(*, num_classes, in_channels, input_size, width: float = 1.0):
        return CifarResNet(depth, num_classes, in_channels, input_size, width)

    build.__name__ = f"resnet{depth}"
    return build


for _d in (20, 32, 44, 56, 110):
    register_model(f"resnet{_d}")(_builder(_d))
