"""SP — Tung & Mori, 2019: preserve the batch's pairwise similarity (row-normalised Gram) of the last stage.

The B×B Gram matrices do not depend on the feature width, so no projector is needed.
``sp_loss`` is RepDistiller's ``||G_s − G_t||_F² / B²`` and its ``β = 3000`` applies unchanged;
several tapped layers give the sum of their losses (RepDistiller's ``sum(loss_group)``).
"""
from __future__ import annotations

from ..losses import sp_loss
from .base import Method, check_pairs, register_method, sum_over_pairs


@register_method("sp")
class SP(Method):
    paper = "Tung & Mori, ICCV 2019 — Similarity-Preserving Knowledge Distillation"
    year = 2019
    kind = "relations"
    zoo = True
    default_weight = 3000.0
    default_student = "@stage:-1"
    default_teacher = "@stage:-1"

    def build(self, s, t):
        check_pairs("sp", s, t)

    def forward(self, s, t, batch):
        return sum_over_pairs(sp_loss, s, t)
