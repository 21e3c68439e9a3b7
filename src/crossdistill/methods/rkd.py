"""RKD — Park et al., 2019: match the batch's pairwise distances and triplet angles (relational structure).

Reads the pooled feature. The loss is ``w_dist · distance + w_angle · angle`` with RepDistiller's
25 / 50 inside, so the term's own weight is ``β = 1``. Both parts are logged.
"""
from __future__ import annotations

from ..losses import rkd_angle_loss, rkd_distance_loss
from .base import Method, NonNegative, register_method


@register_method("rkd")
class RKD(Method):
    paper = "Park et al., CVPR 2019 — Relational Knowledge Distillation"
    year = 2019
    kind = "relations"
    zoo = True
    default_weight = 1.0
    default_student = "@pooled"
    default_teacher = "@pooled"

    def __init__(self, w_dist: NonNegative = 25.0, w_angle: NonNegative = 50.0, **sides):
        super().__init__(**sides)
        self.w_dist = w_dist
        self.w_angle = w_angle

    def forward(self, s, t, batch):
        dist = rkd_distance_loss(s[0], t[0])
        angle = rkd_angle_loss(s[0], t[0])
        return {"loss": self.w_dist * dist + self.w_angle * angle, "distance": dist, "angle": angle}
