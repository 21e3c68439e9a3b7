"""Wide ResNets (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016): WRN-d-k, pre-activation
blocks, three stages of (d-4)/6 blocks with 16k/32k/64k channels; dropout 0 by default, as in CRD.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .cifar_resnet import conv3x3
from .registry import register_model
from .staged import StagedBackbone


class PreActBlock(nn.Module):
    """BN-ReLU-conv3×3-BN-ReLU-(dropout)-conv3×3, plus the shortcut; no activation after the sum."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = conv3x3(planes, planes)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(act)))))
        # When the shape changes the projection reads the activated input (the original WRN code).
        residual = x if self.shortcut is None else self.shortcut(act)
        return out + residual


class WideResNet(StagedBackbone):
    """WRN-depth-widen for 32×32 inputs.

    The stages end without an activation (pre-activation design), so their outputs are the
    pre-ReLU maps; the closing BN-ReLU is the module ``bn_relu`` before ``pool``.
    """

    neck = "bn_relu"
    # RepDistiller's pre-activation maps: each stage output through the BN that opens the next block
    # (layer2.0.bn1, layer3.0.bn1), and the last one through the closing BN
    preact_layers = ("layer2.0.bn1", "layer3.0.bn1", "bn_relu.0")

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int = 100,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = conv3x3(in_channels, widths[0])
        self.layer1 = self._make_stage(widths[0], widths[1], n, 1, drop_rate)
        self.layer2 = self._make_stage(widths[1], widths[2], n, 2, drop_rate)
        self.layer3 = self._make_stage(widths[2], widths[3], n, 2, drop_rate)
        self.bn_relu = nn.Sequential(nn.BatchNorm2d(widths[3]), nn.ReLU())
        self.add_head(widths[3], num_classes)
        nn.init.zeros_(self.fc.bias)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, blocks: int, stride: int, drop_rate: float) -> nn.Sequential:
        return nn.Sequential(
            *(
                PreActBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1, drop_rate)
                for i in range(blocks)
            )
        )



@register_model("wrn_16_1")
def wrn_16_1(num_classes: int = 100, in_channels: int = 3, **kwargs) -> WideResNet:
    return WideResNet(16, 1, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model("wrn_16_2")
def wrn_16_2(num_classes: int = 100, in_channels: int = 3, **kwargs) -> WideResNet:
    return WideResNet(16, 2, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model("wrn_40_1")
def wrn_40_1(num_classes: int = 100, in_channels: int = 3, **kwargs) -> WideResNet:
    return WideResNet(40, 1, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model("wrn_40_2")
def wrn_40_2(num_classes: int = 100, in_channels: int = 3, **kwargs) -> WideResNet:
    return WideResNet(40, 2, num_classes=num_classes, in_channels=in_channels, **kwargs)
