"""MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018) in
the CIFAR form used by CRD: width multiplier 0.5, expansion T=6, a stride-2 stem, a 1280-wide last conv.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .cifar_resnet import conv3x3, global_pool, init_weights
from .registry import register_model


def _settings(expansion: int) -> list[tuple[int, int, int, int]]:
    """(expansion, channels at width 1, repeats, first stride) per row of the paper's table 2, with
    ``expansion`` in every row but the first; the CIFAR form uses stride 1 in the second row."""
    return [
        (1, 16, 1, 1),
        (expansion, 24, 2, 1),
        (expansion, 32, 3, 2),
        (expansion, 64, 4, 2),
        (expansion, 96, 3, 1),
        (expansion, 160, 3, 2),
        (expansion, 320, 1, 1),
    ]


class InvertedResidual(nn.Module):
    """1×1 expand-BN-ReLU, 3×3 depthwise-BN-ReLU, 1×1 project-BN (linear), residual when shapes match.

    The expansion conv is kept even at expansion 1, as in the CRD model.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_planes * expansion
        self.use_residual = stride == 1 and in_planes == out_planes
        self.conv = nn.Sequential(
            nn.Conv2d(in_planes, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            conv3x3(hidden, hidden, stride, groups=hidden),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, out_planes, 1, bias=False),
            nn.BatchNorm2d(out_planes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """Stages are grouped by resolution (16/8/4/2 px for a 32×32 input), matching CRD's f1..f4:

    ``layer1`` = rows 1–2, ``layer2`` = row 3, ``layer3`` = rows 4–5, ``layer4`` = rows 6–7; then
    ``last_conv`` (1×1 conv-BN-ReLU to 1280 channels), ``pool``, ``fc``.
    """

    def __init__(
        self,
        num_classes: int = 100,
        in_channels: int = 3,
        width_mult: float = 0.5,
        expansion: int = 6,
        last_channels: int = 1280,
    ):
        super().__init__()
        planes = int(32 * width_mult)
        self.stem = nn.Sequential(conv3x3(in_channels, planes, 2), nn.BatchNorm2d(planes), nn.ReLU())
        rows: list[nn.Sequential] = []
        for t, c, n, s in _settings(expansion):
            out_planes = int(c * width_mult)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(planes, out_planes, s if i == 0 else 1, t))
                planes = out_planes
            rows.append(nn.Sequential(*blocks))
        # Flatten the rows of each stage into one Sequential so block paths read "layer3.4".
        self.layer1 = nn.Sequential(*rows[0], *rows[1])
        self.layer2 = nn.Sequential(*rows[2])
        self.layer3 = nn.Sequential(*rows[3], *rows[4])
        self.layer4 = nn.Sequential(*rows[5], *rows[6])
        # The paper widens the last conv only for width > 1 (never narrows it).
        last = int(last_channels * width_mult) if width_mult > 1.0 else last_channels
        self.last_conv = nn.Sequential(
            nn.Conv2d(planes, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU()
        )
        self.pool = global_pool()
        self.fc = nn.Linear(last, num_classes)

        self.feature_layers: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")
        self.pooled_layer = "pool"
        self.classifier = "fc"
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return self.fc(self.pool(self.last_conv(x)))


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int = 100, in_channels: int = 3, **kwargs) -> MobileNetV2:
    """MobileNetV2 at width 0.5, expansion 6 (CRD's ``MobileNetV2``); ``width_mult=`` to change."""
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels, **kwargs)
