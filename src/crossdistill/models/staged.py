"""The staged backbone the CIFAR zoo shares: ``stem`` → ``layer1`` … ``layerN`` → (``neck``) → ``pool`` →
``fc``, and the declarations distillers read by name (``feature_layers``, ``pooled_layer``,
``classifier``, and ``preact_layers`` where a model has pre-activation maps).

A model builds ``stem`` and its stages in ``__init__`` (registration order is the ``state_dict`` order:
stem, stages, neck, pool, fc), then calls :meth:`StagedBackbone.add_head`, which adds ``pool`` and
``fc`` and initialises the weights. The forward is the chain above, nothing model-specific.
"""
from __future__ import annotations

from typing import ClassVar, Optional, Tuple

import torch
import torch.nn as nn


def global_pool() -> nn.Sequential:
    """The ``pool`` module of every classifier: ``[B, C, H, W] -> [B, C]`` for any H, W."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) convs, unit/zero norms, PyTorch's default for linear layers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class StagedBackbone(nn.Module):
    #: the stage modules, in order: the forward runs them, ``@stage:N`` / ``@stages`` read them
    feature_layers: ClassVar[Tuple[str, ...]] = ("layer1", "layer2", "layer3")
    #: the module between the last stage and ``pool`` (e.g. a closing BN-ReLU), if any
    neck: ClassVar[Optional[str]] = None
    pooled_layer: ClassVar[str] = "pool"
    classifier: ClassVar[str] = "fc"
    #: the pre-activation maps AB reads (``@preacts``); a model without them gives its stages
    preact_layers: Tuple[str, ...] = ()

    def add_head(self, features: int, num_classes: int) -> None:
        """``pool`` and ``fc`` (``features`` → ``num_classes``), then the zoo's weight initialisation."""
        self.pool = global_pool()
        self.fc = nn.Linear(features, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in self.feature_layers:
            x = getattr(self, name)(x)
        if self.neck is not None:
            x = getattr(self, self.neck)(x)
        return self.fc(self.pool(x))
