"""KD — Hinton et al. 2015: match the teacher's temperature-softened class distribution."""
from __future__ import annotations

from ..losses import kd_loss
from .base import Method, Positive, register_method
from .logit_standardization import StandardizedLogits


@register_method("kd")
class KD(StandardizedLogits, Method):
    paper = "Hinton, Vinyals & Dean, arXiv 2015 — Distilling the Knowledge in a Neural Network"
    year = 2015
    kind = "logits"
    zoo = True
    default_weight = 0.9  # RepDistiller: γ=0.1 (set task_weight) , α=0.9

    def __init__(self, T: Positive = 4.0, standardize: bool = False, **sides):
        super().__init__(**sides)
        self.T = T
        self.standardize = standardize  # logit standardisation (Sun et al. 2024): z-score both before T

    def forward(self, s, t, batch):
        return kd_loss(*self.standardized(s[0], t[0]), self.T)
