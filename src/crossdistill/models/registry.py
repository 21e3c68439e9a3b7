"""Model registry: ``create_model(name, num_classes=..., in_channels=...)`` and ``list_models()``.

Every model returns its task output from ``forward`` (logits ``[B, K]`` or a dense map
``[B, K, H, W]``) and exposes, as plain attributes, the module paths that distillers tap:

- ``feature_layers``: the stage outputs, shallow to deep (e.g. ``("layer1", "layer2", "layer3")``)
- ``pooled_layer``: the module whose output is the pooled penultimate vector ``[B, D]``
  (absent on dense models, where methods pool a stage output themselves)
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
register_model = MODELS.register


def create_model(name: str, num_classes: int = 100, in_channels: int = 3, **kwargs) -> nn.Module:
    return MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, **kwargs)


def list_models() -> list[str]:
    return MODELS.names()
