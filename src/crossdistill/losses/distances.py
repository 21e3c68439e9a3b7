"""Distances between two already-projected feature tensors of the same shape (FitNet-style terms).

The readings of Learning to Project that the same authors' public work suggests (docs/cross_task.md):

- ``l2``:        ``L = mean_i (a_i − b_i)²``                       (FitNet's hint loss, the default)
- ``smooth_l1``: ``L = mean_i h_β(a_i − b_i)``, ``h_β(x) = x²/(2β)`` if ``|x| < β`` else ``|x| − β/2``
                 (Huber; VkD's distance)
- ``log_sum``:   ``L = log Σ_i |a_i − b_i|^α``                     (α ≈ 4; "Understanding the role of
                 the projector in KD")

``i`` runs over every element (batch, channels, positions). ``log_sum`` sums where the others
average: a mean would only shift it by the constant ``log N``. Its gradient,
``α |Δ_i|^{α−1} sign(Δ_i) / Σ_j |Δ_j|^α``, is invariant to the scale of ``Δ`` — the term pulls the
largest residuals hardest whatever their size. It can be negative.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, ShapeError

__all__ = ["feature_distance", "l2_distance", "smooth_l1_distance", "log_sum_distance"]


def _same_shape(name: str, a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ShapeError(f"{name}: shapes {tuple(a.shape)} and {tuple(b.shape)} must match")


def l2_distance(a: Tensor, b: Tensor) -> Tensor:
    """``mean_i (a_i − b_i)²``."""
    _same_shape("l2_distance", a, b)
    return F.mse_loss(a, b, reduction="mean")


def smooth_l1_distance(a: Tensor, b: Tensor, beta: float = 1.0) -> Tensor:
    """``mean_i h_β(a_i − b_i)`` with the Huber function ``h_β`` above (``β > 0``)."""
    _same_shape("smooth_l1_distance", a, b)
    if beta <= 0:
        raise ConfigError(f"smooth_l1_distance: beta must be > 0, got {beta}")
    return F.smooth_l1_loss(a, b, reduction="mean", beta=beta)


def log_sum_distance(a: Tensor, b: Tensor, alpha: float = 4.0) -> Tensor:
    """``log Σ_i |a_i − b_i|^α`` (``α > 0``), computed as ``logsumexp(α · log|Δ|)`` so that neither
    large nor small residuals overflow; residuals below 1e-30 count as 1e-30 (exact ties)."""
    _same_shape("log_sum_distance", a, b)
    if alpha <= 0:
        raise ConfigError(f"log_sum_distance: alpha must be > 0, got {alpha}")
    log_abs = (a - b).abs().clamp_min(1e-30).log()
    return torch.logsumexp(alpha * log_abs.flatten(), dim=0)


DISTANCES: Dict[str, Callable[..., Tensor]] = {
    "l2": l2_distance,
    "smooth_l1": smooth_l1_distance,
    "log_sum": log_sum_distance,
}


def feature_distance(name: str, a: Tensor, b: Tensor, alpha: float = 4.0, beta: float = 1.0) -> Tensor:
    """The distance ``name`` (``l2``, ``smooth_l1``, ``log_sum``) with its own parameter."""
    if name == "l2":
        return l2_distance(a, b)
    if name == "smooth_l1":
        return smooth_l1_distance(a, b, beta)
    if name == "log_sum":
        return log_sum_distance(a, b, alpha)
    raise ConfigError(f"unknown distance '{name}': valid choices: {', '.join(DISTANCES)}")
