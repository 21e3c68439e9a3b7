"""MobileNetV2 (Sandler et al., CVPR 2018) for 224-px ImageNet inputs, in torchvision's layout
(``features.N…``), so torchvision's ``mobilenet_v2`` files load as they are. One name differs: the
zoo's ``classifier`` attribute is the head's *path* (a string every method reads), so the Linear is
``fc`` rather than torchvision's ``classifier.1``; reading a file maps ``classifier.1.*`` to ``fc.*``
(and :func:`crossdistill.models.weights.to_torchvision` maps it back).

The CIFAR model ``mobilenetv2`` (CRD / RepDistiller form: width 0.5, stride-1 second row, layers
grouped by resolution) is a different network and keeps its own layout; this one is the paper's
ImageNet network at any width (3.50M parameters at width 1 and 1000 classes).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .cifar_resnet import global_pool
from .registry import register_model
from .resnet import StemView

# (expansion t, output channels c, repeats n, first stride s): the paper's table 2
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10% (the
    reference implementation's rule, which torchvision's weights were trained with)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn_relu6(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6())


class InvertedResidual(nn.Module):
    """(1×1 expand-BN-ReLU6, skipped at expansion 1), 3×3 depthwise-BN-ReLU6, 1×1 project-BN; the
    residual when the shapes match. ``conv`` holds them as torchvision numbers them."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = int(round(cin * expansion))
        self.use_residual = stride == 1 and cin == cout
        layers = [conv_bn_relu6(cin, hidden, 1)] if expansion != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2ImageNet(nn.Module):
    """``features.0`` (stem, also tappable as ``stem``), ``features.1``..``17`` (inverted residuals),
    ``features.18`` (1×1 conv to 1280), ``pool``, ``dropout``, ``fc``.

    ``feature_layers``: the last block at strides 4, 8, 16 and the final conv (stride 32).
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 dropout: float = 0.2):
        super().__init__()
        planes = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [conv_bn_relu6(in_channels, planes, 3, 2)]
        for t, c, n, s in _SETTINGS:
            out = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(planes, out, s if i == 0 else 1, t))
                planes = out
        features.append(conv_bn_relu6(planes, last, 1))
        self.features = nn.Sequential(*features)
        self.stem = StemView(self.features[0])
        self.pool = global_pool()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(last, num_classes)

        self.feature_layers: tuple[str, ...] = ("features.3", "features.6", "features.13", "features.18")
        self.pooled_layer = "pool"
        self.classifier = "fc"
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # torchvision's head, classifier = Sequential(Dropout, Linear), is our fc
        for key in [k for k in state_dict if k.startswith(prefix + "classifier.1.")]:
            state_dict[prefix + "fc." + key[len(prefix + "classifier.1."):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.features[1:]:
            x = block(x)
        return self.fc(self.dropout(self.pool(x)))


@register_model("mobilenet_v2")
def mobilenet_v2(num_classes: int = 1000, in_channels: int = 3, **kwargs) -> MobileNetV2ImageNet:
    """MobileNetV2 for ImageNet-size inputs in torchvision's layout; options: width_mult, dropout."""
    return MobileNetV2ImageNet(num_classes=num_classes, in_channels=in_channels, **kwargs)
