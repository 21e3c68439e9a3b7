"""The hierarchical context loss of ReviewKD (Chen et al., CVPR 2021 — "Distilling Knowledge via
Knowledge Review").

For one stage, with ``a`` the student's fused map and ``b`` the teacher's map (both ``[B, C, H, W]``)::

    hcl(a, b) = ( mse(a, b) + Σ_{l ∈ levels, l < H} w_l · mse(pool_l(a), pool_l(b)) ) / (1 + Σ w_l)

``mse`` is the mean over every element, ``pool_l`` the adaptive average pooling to ``l × l``, and
the weights halve at every level that is *used*: 1/2, 1/4, 1/8 for the levels (4, 2, 1) of a map
larger than 4 × 4. A level at least as large as the map (``l ≥ H``, judged on the student's height
as the official code does) is skipped and takes no weight, so a 1 × 1 map (the pooled feature) is a
plain MSE. ``hcl_loss`` sums the stages — the official ``hcl`` (dvlab-research/ReviewKD
``CIFAR-100/model/reviewkd.py``, mdistiller ``mdistiller/distillers/ReviewKD.py``).
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor

from ..errors import ShapeError

__all__ = ["hcl_loss", "hcl_stage_loss"]


def hcl_stage_loss(a: Tensor, b: Tensor, levels: Sequence[int] = (4, 2, 1)) -> Tensor:
    """The hierarchical context loss of one stage (module docstring); ``a``, ``b``: ``[B, C, H, W]``."""
    if a.shape != b.shape or a.dim() != 4:
        raise ShapeError(f"hcl_loss: student {tuple(a.shape)} and teacher {tuple(b.shape)} must be "
                         "[B, C, H, W] maps of the same shape")
    loss = F.mse_loss(a, b)
    weight, total = 1.0, 1.0
    for level in levels:
        if level >= a.shape[-2]:
            continue  # as the reference: a pyramid level no smaller than the map adds nothing
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(a, level), F.adaptive_avg_pool2d(b, level))
        total += weight
    return loss / total


def hcl_loss(student: Sequence[Tensor], teacher: Sequence[Tensor], levels: Sequence[int] = (4, 2, 1)) -> Tensor:
    """``Σ_stages hcl_stage_loss(a_i, b_i)`` over as many student as teacher maps."""
    if len(student) != len(teacher) or not student:
        raise ShapeError(f"hcl_loss: needs as many student as teacher maps (≥ 1), got {len(student)} and {len(teacher)}")
    total = hcl_stage_loss(student[0], teacher[0], levels)
    for a, b in zip(student[1:], teacher[1:]):
        total = total + hcl_stage_loss(a, b, levels)
    return total
