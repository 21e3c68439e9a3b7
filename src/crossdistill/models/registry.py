"""Model registry: ``create_model(name, num_classes=..., in_channels=...)`` and ``list_models()``.

Every model returns its task output from ``forward`` (logits ``[B, K]`` or a dense map
``[B, K, H, W]``) and exposes, as plain attributes, the module paths that distillers tap:

- ``feature_layers``: the stage outputs, shallow to deep (e.g. ``("layer1", "layer2", "layer3")``)
- ``preact_layers`` (optional): the pre-activation map of each stage as a side — a module path,
  or a path with ``:input`` for a module's input (e.g. the pre-ReLU sum of a residual block); AB
  reads these (alias ``@preacts``), and models without it fall back to ``feature_layers``
- ``pooled_layer``: the module whose output is the pooled penultimate vector ``[B, D]``
  (absent on dense models, where methods pool a stage output themselves)
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..errors import ConfigError
from ..registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
register_model = MODELS.register


def create_model(name: str, num_classes: int = 100, in_channels: int = 3, **kwargs) -> nn.Module:
    factory = MODELS.get(name)
    try:
        return factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except (TypeError, ValueError) as e:
        # an unknown or ill-typed option (e.g. ``options: {widht: 2}``) is the user's, not a crash
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"model '{name}' cannot be built with options {kwargs or '{}'} ({msg}); "
                          "check the option names and values in the model's docstring") from None


def list_models() -> list[str]:
    return MODELS.names()
