"""ShuffleNet (Zhang et al., "ShuffleNet: An Extremely Efficient CNN for Mobile Devices", CVPR 2018) in the
CIFAR form used by CRD: g=3, stages of 4/8/4 units with 240/480/960 channels, a 1×1 stem of 24 channels.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .cifar_resnet import conv3x3
from .registry import register_model
from .staged import StagedBackbone


class ChannelShuffle(nn.Module):
    """[B, g·c, H, W] -> [B, c·g, H, W]: interleave the channels of ``groups`` groups."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.reshape(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class ShuffleUnit(nn.Module):
    """Grouped 1×1-BN-ReLU, shuffle, 3×3 depthwise-BN-ReLU, grouped 1×1-BN, then add (stride 1) or
    concatenate with a 3×3 average-pooled shortcut (stride 2), then ReLU.

    The ReLU after the depthwise conv is not in the paper but is in the CRD model this reproduces.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int, first_group: int):
        super().__init__()
        self.stride = stride
        # A stride-2 unit concatenates its input, so its branch only produces the missing channels.
        branch = out_planes - in_planes if stride == 2 else out_planes
        mid = branch // 4
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=first_group, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU()
        self.shuffle = ChannelShuffle(first_group)
        self.conv2 = conv3x3(mid, mid, stride, groups=mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(mid, branch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch)
        self.shortcut: nn.Module = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shuffle(self.relu1(self.bn1(self.conv1(x))))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return self.relu3(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(StagedBackbone):
    """``stem`` (1×1 conv-BN-ReLU, 24 ch) and three stages at 16/8/4 px for a 32×32 input."""

    def __init__(
        self,
        num_classes: int = 100,
        in_channels: int = 3,
        stage_planes: tuple[int, int, int] = (240, 480, 960),
        stage_units: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        stem_planes: int = 24,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_planes, 1, bias=False), nn.BatchNorm2d(stem_planes), nn.ReLU()
        )
        planes = stem_planes
        stages = []
        for i, (out_planes, units) in enumerate(zip(stage_planes, stage_units)):
            blocks = []
            for j in range(units):
                # The paper keeps the first 1×1 conv ungrouped: the stem has too few channels to split.
                first_group = 1 if (i == 0 and j == 0) else groups
                blocks.append(ShuffleUnit(planes, out_planes, 2 if j == 0 else 1, groups, first_group))
                planes = out_planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.add_head(planes, num_classes)


@register_model("shufflenetv1")
def shufflenetv1(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes=num_classes, in_channels=in_channels, **kwargs)
