"""VGG with batch norm (Simonyan & Zisserman, "Very Deep Convolutional Networks", ICLR 2015), in the
CIFAR form used by CRD: five conv groups, max-pool between the first four, one linear classifier.
vgg8 is the small member of that family (one conv per group).
"""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from .cifar_resnet import conv3x3
from .registry import register_model
from .staged import StagedBackbone

# Output channels of each conv in the five groups.
CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _convs(in_planes: int, widths: Sequence[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [conv3x3(in_planes, w), nn.BatchNorm2d(w), nn.ReLU()]
        in_planes = w
    return layers


class VGG(StagedBackbone):
    """Stages are grouped by resolution (32/16/8/4 px for a 32×32 input):

    - ``stem``   = group 1 at full resolution
    - ``layer1`` = max-pool + group 2, ``layer2`` = max-pool + group 3
    - ``layer3`` = max-pool + groups 4 and 5 (CRD skips the 4th max-pool on 32×32 inputs, so both
      groups run at 4×4; its hint features f1, f2, f3 are exactly these three stage outputs)
    """

    def __init__(self, groups: Sequence[Sequence[int]], num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        g = [list(x) for x in groups]
        self.stem = nn.Sequential(*_convs(in_channels, g[0]))
        self.layer1 = nn.Sequential(nn.MaxPool2d(2), *_convs(g[0][-1], g[1]))
        self.layer2 = nn.Sequential(nn.MaxPool2d(2), *_convs(g[1][-1], g[2]))
        self.layer3 = nn.Sequential(nn.MaxPool2d(2), *_convs(g[2][-1], g[3] + g[4]))
        self.add_head(g[4][-1], num_classes)


@register_model("vgg8")
def vgg8(num_classes: int = 100, in_channels: int = 3, **kwargs) -> VGG:
    return VGG(CONFIGS["vgg8"], num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model("vgg11")
def vgg11(num_classes: int = 100, in_channels: int = 3, **kwargs) -> VGG:
    return VGG(CONFIGS["vgg11"], num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model("vgg13")
def vgg13(num_classes: int = 100, in_channels: int = 3, **kwargs) -> VGG:
    return VGG(CONFIGS["vgg13"], num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model("vgg16")
def vgg16(num_classes: int = 100, in_channels: int = 3, **kwargs) -> VGG:
    return VGG(CONFIGS["vgg16"], num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model("vgg19")
def vgg19(num_classes: int = 100, in_channels: int = 3, **kwargs) -> VGG:
    return VGG(CONFIGS["vgg19"], num_classes=num_classes, in_channels=in_channels, **kwargs)
