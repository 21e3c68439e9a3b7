"""Contrastive losses: CRD's NCE objective (Tian et al., 2020) and an InfoNCE alternative.

The memory banks, embedding heads and the normaliser ``Z`` are state; they live in the CRD method's
module. These functions only score and compute the loss. Conventions: ``K`` negatives per anchor,
column 0 of every ``[B, K+1]`` tensor is the positive.
"""
from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ShapeError


def _check_scores(name: str, x: Tensor) -> int:
    if x.dim() != 2 or x.shape[1] < 2:
        raise ShapeError(f"{name}: expected [B, K+1] with K >= 1 (column 0 = positive), got {tuple(x.shape)}")
    return x.shape[1] - 1


def crd_logits(anchor: Tensor, bank_rows: Tensor, T: float) -> Tensor:
    """``logit[b, k] = ⟨bank_rows[b, k], anchor[b]⟩ / T`` for ``anchor [B, D]``, ``bank_rows [B, K+1, D]``."""
    if anchor.dim() != 2 or bank_rows.dim() != 3 or bank_rows.shape[0] != anchor.shape[0] or bank_rows.shape[2] != anchor.shape[1]:
        raise ShapeError(
            f"crd scores: anchor [B, D] and bank rows [B, K+1, D] do not fit: {tuple(anchor.shape)}, {tuple(bank_rows.shape)}"
        )
    return torch.bmm(bank_rows, anchor.unsqueeze(2)).squeeze(2) / T


def crd_scores(anchor: Tensor, bank_rows: Tensor, T: float) -> Tensor:
    """Unnormalised CRD scores ``exp(⟨bank_rows[b, k], anchor[b]⟩ / T)``, shape ``[B, K+1]``.

    The reference divides these by ``Z`` to get ``P``. With unit vectors and ``T = 0.07`` they reach
    ``e^{14.3} ≈ 1.6e6`` — fine in float32, an overflow in float16; use :func:`crd_logits` with
    :func:`crd_loss_from_logits` under reduced precision.
    """
    return torch.exp(crd_logits(anchor, bank_rows, T))


def crd_nce_loss(P: Tensor, n_data: int, eps: float = 1e-7) -> Tensor:
    """CRD's NCE loss on normalised scores ``P [B, K+1]`` (already divided by ``Z``).

    With the noise probability ``P_n = 1/n_data`` and ``K`` = number of negatives::

        L = −(1/B) Σ_b [ log(P_b0 / (P_b0 + K·P_n + ε))  +  Σ_{k=1..K} log(K·P_n / (P_bk + K·P_n + ε)) ]

    — a *sum* over the K negatives, a mean over the batch, as in the reference. With every ``P = P_n``
    this is ``ln(K+1) + K·ln((K+1)/K) ≈ ln(K+1) + 1``.

    Evaluated as written, each negative's term is the difference of two logarithms ≈ −1.1 whose
    difference is ≈ 1e-4: in float32 the rounding of ``c = K·P_n + ε`` alone shifts every one of the
    K terms the same way (~6e-5 relative on the loss at K = 16384). So, with ``c`` in double precision,
    ``log(P/(P + c)) = −log1p(c/P)`` and ``log(K·P_n/(P + c)) = log(K·P_n/c) − log1p(P/c)``: the
    constant is formed once in double and ``log1p`` of a small ratio is exact to float32's relative
    precision — float32 then agrees with float64 to ~1e-7 relative (tested at K = 16384).
    """
    k = _check_scores("crd_nce_loss", P)
    noise = k / float(n_data)
    c = noise + eps  # a Python float: double precision
    log_d1 = -torch.log1p(c / P[:, 0])
    log_d0 = torch.log1p(P[:, 1:] / c)
    b = P.shape[0]
    return -(log_d1.sum() - log_d0.sum()) / b - k * math.log(noise / c)


def _nce_from_log_probs(log_p: Tensor, n_data: int, eps: float) -> Tensor:
    """:func:`crd_nce_loss` with ``log P`` as input, with ``x = log P − log c`` and ``c = K·P_n + ε``:
    ``log(P/(P+c)) = x − softplus(x)`` and ``log(K·P_n/(P+c)) = log(K·P_n/c) − softplus(x)``.

    The constant ``log(K·P_n/c)`` is formed in double precision and ``softplus`` is accurate for very
    negative ``x``: subtracting two float32 numbers near ``log c`` per negative instead would cost
    ~1e-4 relative at K = 16384.
    """
    k = _check_scores("crd_loss_from_logits", log_p)
    noise = k / float(n_data)
    x = log_p - math.log(noise + eps)
    log_d1 = x[:, 0] - F.softplus(x[:, 0])
    log_d0 = (math.log(noise) - math.log(noise + eps)) - F.softplus(x[:, 1:])
    return -(log_d1.sum() + log_d0.sum()) / log_p.shape[0]


def _log(z: Union[float, Tensor], like: Tensor) -> Tensor:
    # log Z in at least float32 (Z itself is ~1e10 and overflows float16), then in the logits' dtype.
    z = torch.as_tensor(z, device=like.device)
    z = z.to(torch.float64 if like.dtype == torch.float64 else torch.float32)
    return torch.log(z).to(like.dtype)


def crd_loss_from_logits(
    logits_s: Tensor,
    logits_t: Tensor,
    Z_s: Union[float, Tensor],
    Z_t: Union[float, Tensor],
    n_data: int,
    eps: float = 1e-7,
) -> Tensor:
    """CRD loss ``crd_nce_loss(exp(logits_s)/Z_s) + crd_nce_loss(exp(logits_t)/Z_t)``, computed stably.

    ``logits = ⟨bank row, anchor⟩ / T`` (:func:`crd_logits`); ``logits_s`` scores the student anchor
    against teacher-bank rows and ``logits_t`` the reverse. Works in log space,
    ``log P = logit − log Z`` and ``log(P/(P + c)) = log P − logaddexp(log P, log c)`` with
    ``c = K·P_n + ε``, so nothing is exponentiated: the value equals the naive formula wherever the
    naive one is finite, and stays finite in float16/bfloat16 or with tiny ``T``.
    """
    if logits_s.shape != logits_t.shape:
        raise ShapeError(f"crd_loss_from_logits: shapes differ, {tuple(logits_s.shape)} vs {tuple(logits_t.shape)}")
    loss_s = _nce_from_log_probs(logits_s - _log(Z_s, logits_s), n_data, eps)
    loss_t = _nce_from_log_probs(logits_t - _log(Z_t, logits_t), n_data, eps)
    return loss_s + loss_t


def infonce_loss(logits: Tensor) -> Tensor:
    """InfoNCE: cross-entropy with the positive in column 0, ``L = mean_b −log softmax(logits_b)_0``.

    An optional softmax variant of CRD that needs no ``Z`` (``logits = ⟨·,·⟩/T`` as for CRD).
    """
    _check_scores("infonce_loss", logits)
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)
