"""ShuffleNetV2 1× (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
Design", ECCV 2018) in the CIFAR form used by CRD: a 1×1 stem of 24 channels, no max-pool, stages of
1 down-sampling + 3/7/3 basic units with 116/232/464 channels, a 1×1 conv to 1024.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .cifar_resnet import conv3x3
from .registry import register_model
from .shufflenetv1 import ChannelShuffle
from .staged import StagedBackbone


class BasicUnit(nn.Module):
    """Split the channels in half; one half passes, the other goes 1×1-BN-ReLU, 3×3 depthwise-BN,
    1×1-BN-ReLU; concatenate and shuffle."""

    def __init__(self, planes: int):
        super().__init__()
        half = planes // 2
        self.half = half
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(half, half, groups=half)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.relu3 = nn.ReLU()
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, x = x[:, : self.half], x[:, self.half :]
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.relu3(self.bn3(self.conv3(out)))
        return self.shuffle(torch.cat([keep, out], 1))


class DownUnit(nn.Module):
    """Both branches see the whole input and halve the resolution; each gives half the output channels.

    left: 3×3 depthwise (stride 2)-BN, 1×1-BN-ReLU; right: 1×1-BN-ReLU, 3×3 depthwise (stride 2)-BN,
    1×1-BN-ReLU; concatenate and shuffle.
    """

    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        mid = out_planes // 2
        self.left = nn.Sequential(
            conv3x3(in_planes, in_planes, 2, groups=in_planes),
            nn.BatchNorm2d(in_planes),
            nn.Conv2d(in_planes, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
        )
        self.right = nn.Sequential(
            nn.Conv2d(in_planes, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            conv3x3(mid, mid, 2, groups=mid),
            nn.BatchNorm2d(mid),
            nn.Conv2d(mid, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
        )
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(torch.cat([self.left(x), self.right(x)], 1))


class ShuffleNetV2(StagedBackbone):
    """``stem`` (1×1 conv-BN-ReLU), three stages at 16/8/4 px for a 32×32 input, then ``last_conv``
    (1×1 conv-BN-ReLU), ``pool``, ``fc``."""

    neck = "last_conv"

    def __init__(
        self,
        num_classes: int = 100,
        in_channels: int = 3,
        stage_planes: tuple[int, int, int] = (116, 232, 464),
        stage_units: tuple[int, int, int] = (3, 7, 3),
        last_channels: int = 1024,
        stem_planes: int = 24,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_planes, 1, bias=False), nn.BatchNorm2d(stem_planes), nn.ReLU()
        )
        planes = stem_planes
        stages = []
        for out_planes, units in zip(stage_planes, stage_units):
            blocks = [DownUnit(planes, out_planes)] + [BasicUnit(out_planes) for _ in range(units)]
            stages.append(nn.Sequential(*blocks))
            planes = out_planes
        self.layer1, self.layer2, self.layer3 = stages
        self.last_conv = nn.Sequential(
            nn.Conv2d(planes, last_channels, 1, bias=False), nn.BatchNorm2d(last_channels), nn.ReLU()
        )
        self.add_head(last_channels, num_classes)


@register_model("shufflenetv2")
def shufflenetv2(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes=num_classes, in_channels=in_channels, **kwargs)
