"""LeNet-300-100, LeNet-5 and VGG-style networks (the small one of the method checks and CIFAR VGGs)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError
from . import register_model

__all__ = ["LeNet300", "LeNet5", "VGG", "VGG_CONFIGS"]


class LeNet300(nn.Module):
    """LeNet-300-100: a fully connected network with hidden layers of 300 and 100 ReLU units."""

    def __init__(self, num_classes=10, in_channels=1, input_size=28, hidden=(300, 100)):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_channels * input_size * input_size, hidden[0])
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(hidden[1], num_classes)
        self.example_input_shape = (in_channels, input_size, input_size)

    def forward(self, x):
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(self.flatten(x))))))


class LeNet5(nn.Module):
    """LeNet-5 as in Caffe and the pruning papers (Han et al. 2015): conv 20 - pool - conv 50 - pool - 500 - out."""

    def __init__(self, num_classes=10, in_channels=1, input_size=28, channels=(20, 50), hidden=500):
        super().__init__()
        side = ((input_size - 4) // 2 - 4) // 2  # two 5x5 valid convs, each followed by a 2x2 pool
        if side < 1:
            raise ConfigError(f"input_size={input_size} is too small for lenet5: it needs input_size >= 16")
        self.conv1 = nn.Conv2d(in_channels, channels[0], 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(channels[1] * side * side, hidden)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)
        self.example_input_shape = (in_channels, input_size, input_size)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


# channel widths; "M" = 2x2 max pool
VGG_CONFIGS = {
    "vgg-small": [32, 32, "M", 64, 64, "M", 128, 128],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """conv3x3 + BN + ReLU stacks with max pools, global average pool and one linear classifier.

    ``features`` is an ``nn.Sequential`` (``features.0`` is the first conv); a pool that would shrink the
    feature map below 1x1 (small inputs) is left out. ``width`` multiplies every channel count.
    """

    def __init__(self, cfg, num_classes=10, in_channels=1, input_size=28, width=1.0):
        super().__init__()
        if not (isinstance(width, (int, float)) and width > 0):
            raise ConfigError(f"width={width!r} must be a positive number (channel multiplier), e.g. 0.5")
        layers, c, side = [], in_channels, input_size
        for v in cfg:
            if v == "M":
                if side >= 2:
                    layers.append(nn.MaxPool2d(2))
                    side //= 2
                continue
            out = max(1, int(round(v * width)))
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            c = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, num_classes)
        self.example_input_shape = (in_channels, input_size, input_size)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.features(x))))


@register_model("lenet300")
def lenet300(*, num_classes, in_channels, input_size):
    return LeNet300(num_classes, in_channels, input_size)


@register_model("lenet5")
def lenet5(*, num_classes, in_channels, input_size):
    return LeNet5(num_classes, in_channels, input_size)


def _vgg_builder(name):
    def build(*, num_classes, in_channels, input_size, width: float = 1.0):
        return VGG(VGG_CONFIGS[name], num_classes, in_channels, input_size, width)

    build.__name__ = name.replace("-", "_")
    return build


for _name in VGG_CONFIGS:
    register_model(_name)(_vgg_builder(_name))
