"""SRD — Miles & Mikolajczyk, AAAI 2024: a linear projector, BatchNorm without affine on both sides, a log-sum distance, plus KD.

From "Understanding the Role of the Projector in Knowledge Distillation", as its authors' code runs it
(roymiles/Simple-Recipe-Distillation ``imagenet/torchdistill/losses/single.py``,
``OurDistillationLoss``; torchdistill's ``SRDLoss`` is the same loss):

    L = 2 · log Σ_{b,d} |BN(P z_s) − BN(z_t)|⁴  +  KL(softmax(t / T) ‖ softmax(s / T)) · T²,   T = 1

``z`` the pooled backbone features, ``P`` a linear map with bias (student → teacher width), ``BN``
the batch standardisation without affine, ε = 1e-4 (``losses.srd_loss``), the KL averaged over the
batch. Options: ``alpha`` (4), ``eps`` (1e-4), ``feature_weight`` (2), ``kd_weight`` (1), ``T`` (1);
``projector: inverted`` maps the teacher's feature into the student's width instead (both sides
are then normalised in the student's space). Shared machinery: ``methods/normalised_projection.py``.
"""
from __future__ import annotations

from typing import ClassVar

from ..losses import srd_loss
from .normalised_projection import NormalisedProjection
from .base import NonNegative, Positive, register_method


@register_method("srd")
class SRD(NormalisedProjection):
    paper: ClassVar[str] = ("Miles & Mikolajczyk, AAAI 2024 — Understanding the Role of the Projector in "
                            "Knowledge Distillation")
    year: ClassVar[int] = 2024
    kind: ClassVar[str] = "features"
    zoo = True
    default_weight = 1.0
    option_defaults = {"bias": True}  # the reference's nn.Linear keeps its bias

    def __init__(self, alpha: Positive = 4.0, eps: Positive = 1e-4, feature_weight: NonNegative = 2.0,
                 kd_weight: NonNegative = 1.0, T: Positive = 1.0, **options):
        super().__init__(feature_weight=feature_weight, kd_weight=kd_weight, T=T, **options)
        self.alpha, self.eps = alpha, eps

    def feature_distance(self, z_s, z_t):
        return srd_loss(z_s, z_t, self.alpha, self.eps)
