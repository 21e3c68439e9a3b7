"""PKT — Passalis & Tefas, 2018: match the conditional distributions of cosine similarities within the batch.

Reads the pooled feature; similarities do not depend on the width, so no projector is needed.
``reduction="mean"`` (mean over all B² entries) is RepDistiller's scale, which ``β = 30000`` assumes.
"""
from __future__ import annotations

from ..losses import pkt_loss
from .base import Method, register_method


@register_method("pkt")
class PKT(Method):
    paper = "Passalis & Tefas, ECCV 2018 — Learning Deep Representations with Probabilistic Knowledge Transfer"
    year = 2018
    kind = "relations"
    zoo = True
    default_weight = 30000.0
    default_student = "@pooled"
    default_teacher = "@pooled"

    def forward(self, s, t, batch):
        return pkt_loss(s[0], t[0], reduction="mean")
