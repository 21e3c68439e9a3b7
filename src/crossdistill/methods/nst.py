"""NST — Huang & Wang, 2017: match the distributions of channel activation patterns (polynomial-kernel MMD).

Each channel's spatial map is one sample; the MMD compares sample sets, so channel counts may
differ. Teacher maps are resized to the student's spatial size. Per-stage losses are summed, as in
RepDistiller (``β = 50``).
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from ..losses import nst_loss
from ..projectors import match_spatial
from .base import Method, register_method


@register_method("nst")
class NST(Method):
    default_weight = 50.0
    default_student = "@stages"
    default_teacher = "@stages"
    float32_inputs = False  # its loss upcasts inside its first pass (losses/features.py)

    def build(self, s, t):
        if len(s) != len(t):
            raise ConfigError(f"nst: {len(s)} student maps but {len(t)} teacher maps; tap as many on each side")

    def forward(self, s, t, batch):
        return torch.stack([nst_loss(fs, match_spatial(ft, fs.shape[-2:])) for fs, ft in zip(s, t)]).sum()
