"""CC — Peng et al., 2019: match the batch's correlation matrix (Gaussian-kernel similarities) of the embeddings.

What is computed: the pooled features, one of them through a linear head, are L2-normalised and
``cc_loss`` compares their B×B kernel matrices, ``||C_s − C_t||_F² / B²``, with the paper's Gaussian
RBF kernel ``exp(−γ||x − y||²)`` (γ = 0.4) Taylor-expanded to order 2 (``kernel="linear"``: cosines).

The head is where the direction choice sits: ``projector="standard"`` maps the student's feature
into the teacher's width (the teacher's feature is used as it is); ``"inverted"`` maps the teacher's
feature into the student's width (Learning to Project); ``"identity"`` uses no head at all (the
kernel matrix is B×B, so the widths may differ). One head only: with trainable heads on *both*
sides (RepDistiller) both can collapse to one constant embedding, which zeroes this loss.

Weight: RepDistiller's ``β = 0.02`` belongs to another criterion (``mean_b Σ_d |Δ_b,d|·|Δ_{b+1},d|``,
``Δ = e_s − e_t``, on unnormalised linear 128-d embeddings), not to this one, whose values lie in
[0, 1] and are typically 1e-3…1e-1. The default ``β = 100`` is the value used with exactly this loss
(normalised features, Gaussian kernel, γ = 0.4, P = 2, mean over B²) in the public
Knowledge-Distillation-Zoo CIFAR scripts (AberHu); it makes ``β·L`` O(0.1–1), like the other terms.
"""
from __future__ import annotations

from typing import Literal

import torch.nn.functional as F

from ..losses import cc_loss
from ..projectors import pool_to_vector, spectrum_logs
from .base import Positive, PositiveInt, register_method
from .projected import ProjectedMethod


@register_method("cc")
class CC(ProjectedMethod):
    paper = "Peng et al., ICCV 2019 — Correlation Congruence for Knowledge Distillation"
    year = 2019
    kind = "relations"
    zoo = True
    default_weight = 100.0
    default_student = "@pooled"
    default_teacher = "@pooled"

    projector_directions = ("standard", "inverted", "identity")

    def __init__(self, kernel: Literal["gaussian", "linear"] = "gaussian", gamma: Positive = 0.4,
                 order: PositiveInt = 2, **options):
        super().__init__(**options)
        self.kernel = kernel
        self.gamma = gamma
        self.order = order

    def build(self, s, t):
        if self.projector_direction != "identity":
            zs, zt = pool_to_vector(s[0]), pool_to_vector(t[0])
            self.projector = self.make_projector(zs.shape[1:], zt.shape[1:], "linear")

    def forward(self, s, t, batch):
        zs, zt = pool_to_vector(s[0]), pool_to_vector(t[0])
        if self.projector_direction != "identity":
            zs, zt = self.projector(zs, zt)
        loss = cc_loss(F.normalize(zs, dim=1), F.normalize(zt, dim=1), self.kernel, self.gamma, self.order)
        return {"loss": loss, **spectrum_logs([getattr(self, "projector", None)])}
