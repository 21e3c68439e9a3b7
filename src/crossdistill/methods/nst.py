"""NST — Huang & Wang, 2017: match the distributions of channel activation patterns (polynomial-kernel MMD).

Each channel's spatial map is one sample; the MMD compares sample sets, so channel counts may
differ. Teacher maps are resized to the student's spatial size (the reference requires equal sizes;
see docs/zoo.md). Per-stage losses are summed, as in RepDistiller (``β = 50``).
"""
from __future__ import annotations

from ..losses import nst_loss
from ..projectors import match_spatial
from .base import Method, check_pairs, register_method, sum_over_pairs


@register_method("nst")
class NST(Method):
    paper = "Huang & Wang, arXiv 2017 — Like What You Like: Knowledge Distill via Neuron Selectivity Transfer"
    year = 2017
    kind = "features"
    zoo = True
    default_weight = 50.0
    default_student = "@stages"
    default_teacher = "@stages"
    float32_inputs = False  # its loss upcasts inside its first pass (losses/features.py)

    def build(self, s, t):
        check_pairs("nst", s, t)

    def forward(self, s, t, batch):
        return sum_over_pairs(lambda fs, ft: nst_loss(fs, match_spatial(ft, fs.shape[-2:])), s, t)
