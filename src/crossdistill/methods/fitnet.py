"""FitNet — Romero et al. 2015: regress one intermediate feature map (the "hint").

The projector joins the two spaces. ``projector="standard"`` is the reference's hint regressor on the
student's map: 1×1 conv → BN → **ReLU** (RepDistiller's ``ConvReg``; the ReLU makes the regressed map
non-negative like the post-ReLU teacher hint it is compared with). ``projector="inverted"`` maps the
teacher's hint into the student's space instead (Learning to Project), which lets it drop
teacher-specific directions; it stays **linear** (conv-BN, no ReLU): with the student's feature
compared untransformed and a linear map on the teacher side, the squared-L2 loss splits exactly into
a knowledge-transfer and a spectral-regularisation part (``losses.spectral.inverted_l2_decomposition``,
derived for a linear projector); both are logged as ``fitnet/transfer`` and ``fitnet/spectral`` and
sum to the loss. A ReLU there would break that identity.

``projector_options`` (``projectors.ProjectorOptions``: BN without affine on both sides,
orthogonal parametrisation, projector weight decay, bias, singular-value logging) and ``distance``
(``l2`` — the hint loss —, ``smooth_l1``, ``log_sum`` with exponent ``alpha``) are the readings of
Learning to Project tested in ``docs/cross_task.md``. The projector's spectrum is logged as
``fitnet/projector_sv/<i>``, ``fitnet/projector_erank`` and ``fitnet/projector_rank``.
"""
from __future__ import annotations

from typing import Literal

import torch.nn.functional as F

from ..losses import feature_distance, inverted_l2_decomposition
from ..tokens import channel_dim
from .base import Positive, register_method
from .projected import ProjectedMethod


@register_method("fitnet")
class FitNet(ProjectedMethod):
    paper = "Romero et al., ICLR 2015 — FitNets: Hints for Thin Deep Nets"
    year = 2015
    kind = "features"
    zoo = True
    default_weight = 100.0
    default_student = "@stage:1"
    default_teacher = "@stage:1"

    projector_directions = ("standard", "inverted", "identity")

    def __init__(self, projector_kind: Literal["linear", "conv_bn"] = "conv_bn", regressor_relu: bool = True,
                 distance: Literal["l2", "smooth_l1", "log_sum"] = "l2", alpha: Positive = 4.0, **options):
        """``regressor_relu``: the reference's ReLU after the standard regressor (ignored by the
        inverted and identity projectors, which stay linear, and under ``projector_options.norm:
        batchnorm``, whose normalised target is half negative). ``projector``, ``projector_options``:
        :class:`ProjectedMethod`."""
        super().__init__(**options)
        self.projector_kind = projector_kind
        self.regressor_relu = regressor_relu
        self.distance, self.alpha = distance, alpha

    def build(self, s, t):
        self.projector = self.make_projector(s[0].shape[1:], t[0].shape[1:], self.projector_kind)

    def forward(self, s, t, batch):
        z_s, z_t = self.projector(s[0], t[0])
        # the reference's regressor ends in a ReLU; under the BN-on-both-sides reading the compared
        # tensors are normalised (half negative), so the ReLU would put the target out of reach
        if self.projector_direction == "standard" and self.regressor_relu and self.projector_options.norm == "none":
            z_s = F.relu(z_s)
        out = {"loss": feature_distance(self.distance, z_s, z_t, alpha=self.alpha), **self.projector.spectrum_logs()}
        if self.projector_direction == "inverted" and self.distance == "l2":
            # MSE = (row-wise squared L2) / d, so each part is divided by d to stay on the MSE scale
            d = z_s.shape[channel_dim(z_s)]
            parts = inverted_l2_decomposition(z_s, z_t)
            out.update(transfer=parts["transfer"] / d, spectral=parts["spectral"] / d)
        return out
