"""DIST — Huang et al., NeurIPS 2022: distil the teacher's relations, not its exact probabilities.

``loss = τ²·(β·inter + γ·intra)`` (``losses.dist_loss``): one minus the Pearson correlation of the
softened predictions, per sample across classes (inter-class) and per class across the batch
(intra-class). Defaults are the authors' loss defaults (β = γ = τ = 1, their ImageNet setting); the
CIFAR-100 recipes use β = γ = 2, τ = 4 (docs/zoo.md says where that comes from). Needs no labels:
it runs on any task with logits, dense ones included (one row per position).
"""
from __future__ import annotations

from typing import ClassVar

from ..losses import dist_loss
from .base import Method, NonNegative, Positive, register_method


@register_method("dist")
class DIST(Method):
    paper: ClassVar[str] = "Huang et al., NeurIPS 2022 — Knowledge Distillation from A Stronger Teacher"
    year: ClassVar[int] = 2022
    kind: ClassVar[str] = "logits"
    zoo = True
    default_weight = 1.0  # the reference adds the DIST loss to the full cross-entropy

    def __init__(self, beta: NonNegative = 1.0, gamma: NonNegative = 1.0, tau: Positive = 1.0, **sides):
        super().__init__(**sides)
        self.beta, self.gamma, self.tau = beta, gamma, tau

    def forward(self, s, t, batch):
        return dist_loss(s[0], t[0], self.tau, self.beta, self.gamma)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}, gamma={self.gamma}, tau={self.tau}"
