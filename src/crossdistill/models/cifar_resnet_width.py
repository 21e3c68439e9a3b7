"""One CIFAR ResNet depth at any width: ``resnet_width`` (``options: {depth: 14, width: 32}``).

A family whose members differ only in width, for experiments that need a teacher's size to grow
without its depth (reproduce dpk-teacher-size: deeper CIFAR ResNets trained briefly got *worse*;
wider ones of one depth keep the same optimisation and get better as they grow).
"""
from __future__ import annotations

from .cifar_resnet import CifarResNet
from .registry import register_model


@register_model("resnet_width")
def resnet_width(num_classes: int = 100, in_channels: int = 3, depth: int = 14, width: int = 16) -> CifarResNet:
    """A CIFAR ResNet-``depth`` (6n+2) with stage widths ``width``, ``2·width``, ``4·width`` (the
    standard ResNets are ``width = 16``: ``resnet_width(depth=14, width=16)`` is ``resnet14``)."""
    if width < 1:
        raise ValueError(f"width must be ≥ 1, got {width}")
    return CifarResNet(depth, (width, width, 2 * width, 4 * width), num_classes=num_classes, in_channels=in_channels)
