"""Distances between features after a parameter-free normalisation — the two recipes of Miles et al.

- ``batch_standardise``: each feature standardised over the batch (``x − mean_B``) / ``sqrt(var_B + ε)``,
  biased variance — what ``BatchNorm1d(affine=False)`` computes in training mode, without running
  statistics (a loss has no eval mode). Maps ``[B, C, H, W]``: over batch and positions, per channel.
- ``layer_standardise``: each sample's feature standardised over its channels (``F.layer_norm``
  without weight or bias). Maps: per position, over channels.
- ``srd_loss`` (Miles & Mikolajczyk, AAAI 2024 — "Understanding the Role of the Projector in
  Knowledge Distillation"): ``log Σ_{b,d} |ẑ_s − ẑ_t|^α`` with ``ẑ = batch_standardise(z, ε)``,
  ``α = 4``, ``ε = 1e-4`` (roymiles/Simple-Recipe-Distillation ``imagenet/torchdistill/losses/single.py``,
  ``OurDistillationLoss.forward_loss``; torchdistill ``SRDLoss``). The sum runs over the whole batch.
- ``vkd_loss`` (Miles, Elezi & Deng, CVPR 2024 — "VkD: Improving Knowledge Distillation using
  Orthogonal Projections"): ``mean_{b,d} h_β(z_s − layer_standardise(z_t))``, ``h_β`` the Huber
  function of ``smooth_l1_distance`` (β = 1), ``z_s`` already projected (roymiles/VkD ``engine.py``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ShapeError
from .distances import log_sum_distance, smooth_l1_distance

__all__ = ["batch_standardise", "layer_standardise", "srd_loss", "vkd_loss"]


def batch_standardise(x: Tensor, eps: float = 1e-4) -> Tensor:
    """Per-feature standardisation over the batch (and positions of a map), biased variance."""
    if x.dim() not in (2, 4):
        raise ShapeError(f"batch_standardise: expects [B, D] or [B, C, H, W], got {tuple(x.shape)}")
    dims = (0,) if x.dim() == 2 else (0, 2, 3)
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, unbiased=False, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps)


def layer_standardise(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-sample standardisation over the channels (per position for a map), no affine."""
    if x.dim() == 4:
        return F.layer_norm(x.movedim(1, -1), (x.shape[1],), eps=eps).movedim(-1, 1)
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


def srd_loss(z_s: Tensor, z_t: Tensor, alpha: float = 4.0, eps: float = 1e-4) -> Tensor:
    """``log Σ |batch_standardise(z_s) − batch_standardise(z_t)|^α`` (module docstring)."""
    if z_s.shape != z_t.shape:
        raise ShapeError(f"srd_loss: shapes {tuple(z_s.shape)} and {tuple(z_t.shape)} must match")
    return log_sum_distance(batch_standardise(z_s, eps), batch_standardise(z_t, eps), alpha)


def vkd_loss(z_s: Tensor, z_t: Tensor, beta: float = 1.0, eps: float = 1e-5) -> Tensor:
    """``mean h_β(z_s − layer_standardise(z_t))`` (module docstring)."""
    if z_s.shape != z_t.shape:
        raise ShapeError(f"vkd_loss: shapes {tuple(z_s.shape)} and {tuple(z_t.shape)} must match")
    return smooth_l1_distance(z_s, layer_standardise(z_t, eps), beta)
