"""MobileNetV2 (Sandler et al. 2018) for small inputs: stride-1 stem and first stages, as on CIFAR."""
from __future__ import annotations

import torch.nn as nn

from ..errors import ConfigError
from . import register_model

__all__ = ["InvertedResidual", "MobileNetV2"]

# (expansion t, output channels c, repeats n, stride of the first block s); strides of the ImageNet
# network's stem and second stage are 1 here, so a 32x32 input ends at 4x4.
_CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _round(c: float, divisor: int = 8) -> int:
    return max(divisor, int(c + divisor / 2) // divisor * divisor)


class InvertedResidual(nn.Module):
    """1x1 expand + ReLU6, 3x3 depthwise + ReLU6, 1x1 linear projection; residual when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        self.use_residual = stride == 1 and c_in == c_out
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes=10, in_channels=1, input_size=28, width=1.0, last_channels=1280):
        super().__init__()
        if not (isinstance(width, (int, float)) and width > 0):
            raise ConfigError(f"width={width!r} must be a positive number (channel multiplier), e.g. 0.5")
        c = _round(32 * width)
        layers = [nn.Conv2d(in_channels, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU6(inplace=True)]
        for t, c_out, n, s in _CFG:
            c_out = _round(c_out * width)
            for i in range(n):
                layers.append(InvertedResidual(c, c_out, s if i == 0 else 1, t))
                c = c_out
        last = _round(last_channels * max(1.0, width))
        layers += [nn.Conv2d(c, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(last, num_classes)
        self.example_input_shape = (in_channels, input_size, input_size)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x):
        return self.fc(self.dropout(self.flatten(self.pool(self.features(x)))))


@register_model("mobilenetv2")
def mobilenetv2(*, num_classes, in_channels, input_size, width: float = 1.0, last_channels: int = 1280):
    return MobileNetV2(num_classes, in_channels, input_size, width, last_channels)
