"""Optional adapter for timm models (Wightman, "PyTorch Image Models"): wraps any timm classifier so it
follows the zoo's conventions (logits out; ``feature_layers`` / ``pooled_layer`` / ``classifier`` paths).

Nothing is registered at import and timm is imported only inside :func:`create_timm_model`, so the core
never depends on timm (nor on the torchvision it pulls in).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError

_MISSING = (
    "timm is not installed (or not importable): pip install 'crossdistill[timm]' with a working torchvision"
)


class TimmClassifier(nn.Module):
    """``body`` is the timm model; ``pool`` is a named identity whose output is timm's pre-logits
    vector ``[B, D]`` (global pooling, plus whatever norm the model applies before its head)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body
        self.pool = nn.Identity()
        info = getattr(body, "feature_info", None) or []
        self.feature_layers: tuple[str, ...] = tuple(
            f"body.{entry['module']}" for entry in info if isinstance(entry, dict) and entry.get("module")
        )
        self.pooled_layer = "pool"
        head = (getattr(body, "pretrained_cfg", None) or {}).get("classifier")
        if isinstance(head, (tuple, list)):  # a few models list several heads; the first is the main one
            head = head[0] if head else None
        self.classifier = f"body.{head}" if head else ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(self.body.forward_head(self.body.forward_features(x), pre_logits=True))
        return self.body.get_classifier()(pooled)


def create_timm_model(name: str, num_classes: int = 100, in_channels: int = 3, **kwargs) -> nn.Module:
    """``timm.create_model(name, num_classes=..., in_chans=...)`` wrapped in :class:`TimmClassifier`.

    ``feature_layers`` comes from timm's ``feature_info`` and is empty for models that have none; paths
    are relative to the wrapper (``body.layer3``). Extra kwargs go to ``timm.create_model``.
    """
    try:
        import timm
    except Exception as exc:  # ImportError, or a broken torchvision raising at import time
        raise ConfigError(_MISSING) from exc
    try:
        body = timm.create_model(name, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except RuntimeError as exc:  # timm's "Unknown model (...)"
        raise ConfigError(f"timm cannot build '{name}': {exc}") from exc
    return TimmClassifier(body)
