"""ImageNet-style ResNet-18/34/50 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016)
with a CIFAR stem: one 3×3 stride-1 conv and no max-pool, four stages at 32/16/8/4 px for 32×32 inputs
(option ``stem="imagenet"``: the usual 7×7/2 conv + 3×3/2 max-pool, for 224 px ImageNet inputs).

Parameters carry torchvision's names (``conv1``, ``bn1``, ``layer1``..``layer4`` with ``downsample.0/1``,
``fc``), so torchvision's and timm's ResNet files — and the self-supervised ones built on them — load
as they are into ``stem="imagenet"``. Files of crossdistill before that rename (``stem.0``/``stem.1``)
still load: the old names are mapped on reading.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Type

import torch
import torch.nn as nn

from ..errors import ConfigError
from .cifar_resnet import BasicBlock, global_pool, init_weights
from .registry import register_model


class Bottleneck(nn.Module):
    """1×1-BN-ReLU, 3×3 (stride)-BN-ReLU, 1×1 (×4 channels)-BN, plus the shortcut, then ReLU."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu3 = nn.ReLU()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.downsample(x))


class StemView(nn.Module):
    """Runs modules that its model owns under their own names, as one tappable ``stem`` module.

    The modules are held outside ``_modules``, so they appear once in the state dict, under the
    owner's (torchvision's) names, while every zoo model still has a ``stem`` to tap.
    """

    def __init__(self, *parts: nn.Module):
        super().__init__()
        self.__dict__["parts"] = parts  # not registered: the owner registers (and moves, saves) them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            x = part(x)
        return x


class ResNet(nn.Module):
    """``conv1``-``bn1``-``relu``(-``maxpool``) = ``stem`` (64 ch), ``layer1``..``layer4``
    (64/128/256/512 × expansion), ``pool``, ``fc``."""

    def __init__(
        self,
        block: Type[BasicBlock] | Type[Bottleneck],
        blocks: Sequence[int],
        num_classes: int = 100,
        in_channels: int = 3,
        stem: str = "cifar",
    ):
        super().__init__()
        expansion = block.expansion
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        elif stem == "imagenet":  # 7×7 stride-2 conv + 3×3 stride-2 max-pool, for 224 px inputs
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        else:
            raise ConfigError(f"ResNet stem '{stem}' is unknown: valid choices: cifar, imagenet")
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        self.stem = StemView(self.conv1, self.bn1, self.relu, self.maxpool)
        self._planes = 64
        self.layer1 = self._make_stage(block, 64, blocks[0], 1, expansion)
        self.layer2 = self._make_stage(block, 128, blocks[1], 2, expansion)
        self.layer3 = self._make_stage(block, 256, blocks[2], 2, expansion)
        self.layer4 = self._make_stage(block, 512, blocks[3], 2, expansion)
        self.pool = global_pool()
        self.fc = nn.Linear(512 * expansion, num_classes)

        self.feature_layers: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")
        self.pooled_layer = "pool"
        self.classifier = "fc"
        init_weights(self)

    def _make_stage(self, block, planes: int, n: int, stride: int, expansion: int) -> nn.Sequential:
        layers = []
        for i in range(n):
            layers.append(block(self._planes, planes, stride if i == 0 else 1))
            self._planes = planes * expansion
        return nn.Sequential(*layers)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # crossdistill's names before the torchvision layout: stem.0 = conv1, stem.1 = bn1
        for old, new in (("stem.0.", "conv1."), ("stem.1.", "bn1.")):
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return self.fc(self.pool(x))


@register_model("ResNet18")
def ResNet18(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model("ResNet34")
def ResNet34(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model("ResNet50")
def ResNet50(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels, **kwargs)


def state_dict_from_torchvision(state: Dict[str, torch.Tensor], strip_prefix: str = "",
                                num_classes: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """A torchvision-layout ResNet state dict (as released by MoCo, BYOL, SwAV, ... checkpoints) →
    one for :class:`ResNet` with ``stem="imagenet"``: ``strip_prefix`` removed (e.g.
    ``"module.encoder_q."``); the names are torchvision's already. The classifier:
    kept when it is one ``fc`` Linear; otherwise (a self-supervised MLP ``fc.0``, ``fc.2``, ... or
    none) replaced by zeros of ``num_classes`` outputs — a teacher's head is never read by methods
    that tap ``@pooled`` such as SimReg. Keys outside the backbone (a momentum encoder, queues) are
    dropped. Save the result with ``torch.save`` and give it as ``teachers.X.weights`` (or give the
    original file with ``weights_layout: ssl``, see docs/teachers.md)."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if strip_prefix:
            if not key.startswith(strip_prefix):
                continue
            key = key[len(strip_prefix):]
        if key.split(".", 1)[0] not in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"):
            continue
        out[key] = value
    linear = "fc.weight" in out and out["fc.weight"].dim() == 2 and set(k for k in out if k.startswith("fc.")) <= {"fc.weight", "fc.bias"}
    if not linear:
        width = out["layer4." + _last_block(out) + ".bn" + ("3" if _bottleneck(out) else "2") + ".weight"].shape[0]
        for k in [k for k in out if k.startswith("fc.")]:
            del out[k]
        if num_classes is None:
            raise ConfigError("the state dict has no linear fc; give num_classes for the replacement classifier")
        out["fc.weight"] = torch.zeros(num_classes, width)
        out["fc.bias"] = torch.zeros(num_classes)
    return out


def _bottleneck(state: Dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("layer1.0.conv3.") for k in state)


def _last_block(state: Dict[str, torch.Tensor]) -> str:
    return str(max(int(k.split(".")[1]) for k in state if k.startswith("layer4.")))
