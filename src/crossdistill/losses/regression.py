"""Regression of unit vectors: SimReg's loss (Navaneet et al. 2021), also SimSiam's / BYOL's.

``normalized_regression_loss(p, z) = mean_b ‖n(p_b) − n(z_b)‖² = mean_b (2 − 2·cos(p_b, z_b))``
with ``n(x) = x / max(‖x‖, ε)``. The two forms are equal because both vectors have unit length:
``‖a − b‖² = ‖a‖² + ‖b‖² − 2⟨a, b⟩ = 2 − 2⟨a, b⟩``. The loss lies in ``[0, 4]``: 0 when the
directions agree, 2 when orthogonal, 4 when opposite. Feature maps are not accepted: pool first.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..errors import ShapeError

__all__ = ["normalized_regression_loss"]

EPS = 1e-12


def normalized_regression_loss(p: Tensor, z: Tensor) -> Tensor:
    """``mean_b (2 − 2·cos(p_b, z_b))`` for ``p, z`` of shape ``[B, D]`` (one vector per row)."""
    if p.dim() != 2 or p.shape != z.shape:
        raise ShapeError(f"normalized_regression_loss compares row vectors [B, D] of the same shape, "
                         f"got {tuple(p.shape)} and {tuple(z.shape)}; pool feature maps and project first")
    cos = (F.normalize(p, dim=1, eps=EPS) * F.normalize(z, dim=1, eps=EPS)).sum(dim=1)
    return (2.0 - 2.0 * cos).mean()
