"""VkD — Miles, Elezi & Deng, CVPR 2024: an orthogonal projector, a layer-normalised teacher, smooth-L1, plus KD.

From "VkD: Improving Knowledge Distillation using Orthogonal Projections", as its authors' code runs
it (roymiles/VkD ``engine.py``, ``train.py``):

    L = α · smoothL1_β(P z_s, LN(z_t))  +  γ · KL(softmax(t / T) ‖ softmax(s / T)) · T²,   α = γ = 1, β = 1, T = 1

``z`` the pooled features (the student's tokens averaged, the teacher's map averaged over positions),
``P`` an orthogonally parametrised linear map without bias (``torch.nn.utils.parametrizations.orthogonal``;
semi-orthogonal when the widths differ), ``LN`` the layer norm without affine (ε = 1e-5), smooth-L1
averaged over every element (``losses.vkd_loss``), the KL averaged over the batch. ``projector: inverted``
maps the teacher's feature into the student's width and normalises that projection: the compared
pair is ``(z_s, LN(P z_t))``. The reference reads its KL from a DeiT's distillation token; a CNN
student has only its logits. Shared machinery: ``methods/normalised_projection.py``.
"""
from __future__ import annotations

from typing import ClassVar

from ..losses import vkd_loss
from .normalised_projection import NormalisedProjection
from .base import NonNegative, Positive, register_method


@register_method("vkd")
class VkD(NormalisedProjection):
    paper: ClassVar[str] = ("Miles, Elezi & Deng, CVPR 2024 — VkD: Improving Knowledge Distillation using "
                            "Orthogonal Projections")
    year: ClassVar[int] = 2024
    kind: ClassVar[str] = "features"
    zoo = True
    default_weight = 1.0
    option_defaults = {"orthogonal": True}  # no bias: the reference's Linear(bias=False)

    def __init__(self, beta: Positive = 1.0, eps: Positive = 1e-5, feature_weight: NonNegative = 1.0,
                 kd_weight: NonNegative = 1.0, T: Positive = 1.0, **options):
        super().__init__(feature_weight=feature_weight, kd_weight=kd_weight, T=T, **options)
        self.beta, self.eps = beta, eps

    def feature_distance(self, z_s, z_t):
        return vkd_loss(z_s, z_t, self.beta, self.eps)
