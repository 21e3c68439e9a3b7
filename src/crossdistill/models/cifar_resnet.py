"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", 2016, §4.2): a 3×3 stem,
three stages of 2-conv BasicBlocks at 32/16/8 px; depth = 6n + 2. The ``x4`` variants (resnet8x4,
resnet32x4) are the 4×-wider versions with channels [32, 64, 128, 256] used by the KD literature (CRD).

``conv3x3`` is shared by the other zoo files; ``init_weights`` and ``global_pool`` live in ``staged.py``
(re-exported here).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .registry import register_model
from .staged import StagedBackbone, global_pool, init_weights  # noqa: F401  (shared by the other zoo files)


# ReLUs are never in-place anywhere in the zoo: a distiller may hook a BatchNorm (the pre-ReLU map) or
# a stage output, and an in-place ReLU that runs afterwards would silently rewrite the captured tensor.


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, groups=groups, bias=False)


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN, plus the shortcut, then ReLU.

    ``relu2``'s input is the block's pre-activation (the sum), readable with a forward pre-hook.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            # Projection shortcut (option B), as in the CRD / RepDistiller CIFAR ResNets.
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.downsample(x))


class CifarResNet(StagedBackbone):
    """ResNet-(6n+2) for 32×32 inputs. ``channels`` = (stem, stage1, stage2, stage3)."""

    def __init__(
        self,
        depth: int,
        channels: Sequence[int] = (16, 16, 32, 64),
        num_classes: int = 100,
        in_channels: int = 3,
    ):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            conv3x3(in_channels, channels[0]), nn.BatchNorm2d(channels[0]), nn.ReLU()
        )
        self._planes = channels[0]
        self.layer1 = self._make_stage(channels[1], n, stride=1)
        self.layer2 = self._make_stage(channels[2], n, stride=2)
        self.layer3 = self._make_stage(channels[3], n, stride=2)
        self.add_head(channels[3], num_classes)
        # the pre-ReLU sum of each stage's last block — the input of its final ReLU (RepDistiller's preact)
        self.preact_layers = tuple(f"layer{i}.{n - 1}.relu2:input" for i in (1, 2, 3))

    def _make_stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            layers.append(BasicBlock(self._planes, planes, stride if i == 0 else 1))
            self._planes = planes
        return nn.Sequential(*layers)



@register_model("resnet8")
def resnet8(num_classes: int = 100, in_channels: int = 3, **kwargs) -> CifarResNet:
    return CifarResNet(8, (16, 16, 32, 64), num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model("resnet14")
def resnet14(num_classes: int = 100, in_channels: int = 3, **kwargs) -> CifarResNet:
    return CifarResNet(14, (16, 16, 32, 64), num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model("resnet20")
def resnet20(num_classes: int = 100, in_channels: int = 3, **kwargs) -> CifarResNet:
    return CifarResNet(20, (16, 16, 32, 64), num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model("resnet32")
def resnet32(num_classes: int = 100, in_channels: int = 3, **kwargs) -> CifarResNet:
    return CifarResNet(32, (16, 16, 32, 64), num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model("resnet44")
def resnet44(num_classes: int = 100, in_channels: int = 3, **kwargs) -> CifarResNet:
    return CifarResNet(44, (16, 16, 32, 64), num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model("resnet56")
def resnet56(num_classes: int = 100, in_channels: int = 3, **kwargs) -> CifarResNet:
    return CifarResNet(56, (16, 16, 32, 64), num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model("resnet110")
def resnet110(num_classes: int = 100, in_channels: int = 3, **kwargs) -> CifarResNet:
    return CifarResNet(110, (16, 16, 32, 64), num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model("resnet8x4")
def resnet8x4(num_classes: int = 100, in_channels: int = 3, **kwargs) -> CifarResNet:
    return CifarResNet(8, (32, 64, 128, 256), num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model("resnet32x4")
def resnet32x4(num_classes: int = 100, in_channels: int = 3, **kwargs) -> CifarResNet:
    return CifarResNet(32, (32, 64, 128, 256), num_classes=num_classes, in_channels=in_channels, **kwargs)
