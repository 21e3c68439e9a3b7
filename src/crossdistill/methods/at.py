"""AT — Zagoruyko & Komodakis, 2017: match the spatial attention maps (channel-mean of f²) of every stage.

Each stage's teacher map is resized to the student's spatial size; channel counts may differ, so
no projector is needed. The per-stage losses are *summed*, as in RepDistiller, whose ``β = 1000``
assumes that sum of ``mean_{b,j} (a_s − a_t)²`` terms.
"""
from __future__ import annotations

from ..losses import at_loss
from ..projectors import match_spatial
from ..tokens import as_map
from .base import Method, Positive, check_pairs, register_method, sum_over_pairs


@register_method("at")
class AT(Method):
    paper = "Zagoruyko & Komodakis, ICLR 2017 — Paying More Attention to Attention"
    year = 2017
    kind = "features"
    zoo = True
    default_weight = 1000.0
    default_student = "@stages"
    default_teacher = "@stages"
    float32_inputs = False  # its loss upcasts inside its first pass (losses/features.py)

    def __init__(self, p: Positive = 2.0, **sides):
        super().__init__(**sides)
        self.p = p

    def build(self, s, t):
        check_pairs("at", s, t)

    def forward(self, s, t, batch):
        # token tensors [B, N, C] (a transformer's) are read as their patch-token maps
        return sum_over_pairs(lambda fs, ft: at_loss(as_map(fs), match_spatial(as_map(ft), as_map(fs).shape[-2:]),
                                                     self.p), s, t)
