"""Learning to Project: the inverted-projector L2 loss split into its two parts, and teacher-free
spectral regularisers (docs/cross_task.md; the paper's own formulas were not reachable, these are derived).

Rows and features: a ``[B, D]`` tensor has ``N = B`` rows of dimension ``d = D``; a dense map
``[B, C, H, W]`` (or any ``[B, C, *]``) has ``N = B·H·W`` rows of dimension ``d = C`` — every pixel is a
sample and the channel axis is the feature axis; tokens ``[B, N, C]`` have ``N = B·N`` rows of dimension
``d = C`` (channels last). ``Z`` below is that ``[N, d]`` matrix, ``σ_i(Z)`` its
singular values in decreasing order.
"""
from __future__ import annotations

import math
from typing import Dict

import torch
from torch import Tensor

from ..errors import ConfigError, ShapeError

__all__ = ["feature_rows", "inverted_l2_decomposition", "spectral_energy", "spectral_tail_ratio",
           "spectral_tail_energy"]


def feature_rows(z: Tensor) -> Tensor:
    """``[B, D]`` unchanged; tokens ``[B, N, C]`` → ``[B·N, C]``; ``[B, C, H, W]`` (or ``[B, C, *]``
    beyond 3 dims) → ``[B·∏*, C]`` (channel last, then flattened)."""
    if z.dim() < 2:
        raise ShapeError(f"expected [B, D] or [B, C, H, W] features, got {tuple(z.shape)}")
    if z.dim() == 2:
        return z
    if z.dim() == 3:  # tokens: channels already last
        return z.reshape(-1, z.shape[-1])
    return z.movedim(1, -1).reshape(-1, z.shape[1])


def inverted_l2_decomposition(z_s: Tensor, z_t_proj: Tensor) -> Dict[str, Tensor]:
    """Squared-L2 distillation loss with an inverted projector, and its two parts.

    With ``Z_s`` the student rows and ``P(Z_t)`` the projected teacher rows (same shape), ``N`` rows::

        loss     = ||Z_s − P(Z_t)||_F² / N
        transfer = (−2⟨Z_s, P(Z_t)⟩_F + ||P(Z_t)||_F²) / N      (knowledge transfer; needs the teacher)
        spectral = ||Z_s||_F² / N = Σ_i σ_i(Z_s)² / N          (student-only; shrinks its spectrum)

    and ``loss = transfer + spectral`` (up to rounding; ``loss`` is computed directly, not as the sum, so
    it does not suffer the cancellation). Note the normalisation is per row, summed over the ``d``
    features: ``loss = d · mse(Z_s, P(Z_t))``.
    """
    if z_s.shape != z_t_proj.shape:
        raise ShapeError(
            f"inverted_l2_decomposition: student {tuple(z_s.shape)} and projected teacher "
            f"{tuple(z_t_proj.shape)} must have the same shape (project / resize first)"
        )
    if z_s.dim() < 2:
        raise ShapeError(f"expected [B, D] or [B, C, H, W] features, got {tuple(z_s.shape)}")
    n = feature_rows(z_s).shape[0]
    loss = (z_s - z_t_proj).pow(2).sum() / n
    transfer = (-2.0 * (z_s * z_t_proj).sum() + z_t_proj.pow(2).sum()) / n
    spectral = z_s.pow(2).sum() / n
    return {"loss": loss, "transfer": transfer, "spectral": spectral}


def _centred_rows(z: Tensor, center: bool) -> Tensor:
    rows = feature_rows(z)
    return rows - rows.mean(dim=0, keepdim=True) if center else rows


def spectral_energy(z: Tensor, center: bool = True) -> Tensor:
    """Normalised spectral energy ``Σ_i σ_i(Z̃)² / N = ||Z̃||_F² / N``.

    ``Z̃`` = rows centred by their mean over the ``N`` rows (batch, and pixels for dense maps) when
    ``center``, else ``Z``. Equals the mean squared row norm of the centred features (the trace of the
    feature covariance); with ``center=False`` it is exactly the ``spectral`` part of
    :func:`inverted_l2_decomposition`.
    """
    rows = _centred_rows(z, center)
    return rows.pow(2).sum() / rows.shape[0]


def _tail_split(rows: Tensor, k_frac: float) -> tuple[Tensor, Tensor]:
    """(Σ_{i>k} σ_i², Σ_i σ_i²) of ``rows`` from the eigenvalues of the smaller Gram matrix."""
    if not 0.0 <= k_frac <= 1.0:
        raise ConfigError(f"k_frac must be in [0, 1], got {k_frac}")
    n, d = rows.shape
    rank_max = min(n, d)
    k = min(rank_max, math.ceil(k_frac * rank_max))
    work_dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
    # Under AMP the Gram would be formed in half precision; its small eigenvalues would be noise.
    with torch.autocast(device_type=rows.device.type, enabled=False):
        x = rows.to(work_dtype)
        gram = x.t() @ x if n >= d else x @ x.t()  # d×d when N ≥ d (cheap for N ≫ d), else N×N
        eig = torch.linalg.eigvalsh(gram).clamp(min=0.0)  # ascending
        tail = eig[: rank_max - k].sum()
        total = x.pow(2).sum()  # = trace(Gram) = Σ σ_i², exact and with the simplest gradient
    return tail, total


def spectral_tail_ratio(z: Tensor, k_frac: float = 0.5, center: bool = True) -> Tensor:
    """Fraction of spectral energy outside the top-k directions: ``Σ_{i>k} σ_i(Z̃)² / Σ_i σ_i(Z̃)²``.

    ``Z̃`` as in :func:`spectral_energy`; ``k = ceil(k_frac · min(N, d))``. The ``σ_i²`` are the
    eigenvalues of ``Z̃ᵀZ̃`` (d×d, used when ``N ≥ d``) or ``Z̃Z̃ᵀ`` (N×N, when ``N < d``), from
    ``torch.linalg.eigvalsh`` in float32 (float64 for float64 input) with autocast off; differentiable.
    Scale-free, in ``[0, 1]``; 0 for an all-zero input. Returned in the input dtype.
    """
    rows = _centred_rows(z, center)
    tail, total = _tail_split(rows, k_frac)
    return (tail / total.clamp(min=torch.finfo(total.dtype).tiny)).to(z.dtype)


def spectral_tail_energy(z: Tensor, k_frac: float = 0.5, center: bool = True) -> Tensor:
    """Unnormalised tail energy ``Σ_{i>k} σ_i(Z̃)² / N``, ``k = ceil(k_frac · min(N, d))``.

    Same eigenvalue computation as :func:`spectral_tail_ratio`; ``center`` as in :func:`spectral_energy`.
    """
    rows = _centred_rows(z, center)
    tail, _ = _tail_split(rows, k_frac)
    return (tail / rows.shape[0]).to(z.dtype)
