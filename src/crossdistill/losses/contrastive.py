"""Contrastive losses: CRD's NCE objective (Tian et al., 2020) — its formula, and the form CRD trains with.

The memory banks, embedding heads and the normaliser ``Z`` are state; they live in the CRD method
(``methods/crd.py``, ``methods/crd_memory.py``). These functions only score and compute the loss.
Conventions: ``K`` negatives per anchor, column 0 of every ``[B, K+1]`` tensor is the positive.

Two groups:

- **the formula** — :func:`crd_logits`, :func:`crd_scores`, :func:`crd_nce_loss` (the reference's NCE
  on normalised scores) and :func:`crd_loss_from_logits` (the same in log space). Plain autograd; the
  test oracle for everything below.
- **the training form** — what the CRD method runs every step. Logits of both directions travel as
  one ``[S, B, K+1]`` tensor (side 0 scores the student anchor against teacher-bank rows, side 1
  the teacher anchor against student-bank rows). :func:`crd_nce_terms` gives the loss *and* its
  gradient w.r.t. the logits in closed form (four passes instead of a dozen plus autograd);
  :func:`crd_nce_fused` is it as an autograd op. The dense step scores every bank row with one GEMM
  and picks the sampled ones (:func:`crd_dense_logits`), and builds the gradient w.r.t. the anchors
  with a scatter and a second GEMM (:func:`crd_dense_grad`); :func:`with_gradient` hands that
  precomputed gradient to autograd, so nothing keeps the bank alive for a backward pass.
  :func:`crd_estimate_z` is the reference's estimate of the normaliser ``Z``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ShapeError
from ..matmul import matmul_nt

__all__ = ["crd_logits", "crd_scores", "crd_nce_loss", "crd_loss_from_logits", "crd_nce_terms",
           "crd_nce_fused", "crd_dense_logits", "crd_dense_grad", "crd_log_z_stats", "crd_estimate_z",
           "with_gradient"]


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


# ------------------------------------------------------------------------------ the training form

def crd_nce_terms(logits: Tensor, Z: Tensor, n: int, eps: float = 1e-7,
                  need_grad: bool = True) -> Tuple[Tensor, Optional[Tensor]]:
    """CRD's NCE loss on ``logits [S, B, K+1]`` (``S`` sides, normalisers ``Z [S]``), summed over the
    sides, and its gradient w.r.t. the logits — in four fused passes.

    The formula of :func:`crd_nce_loss` / :func:`crd_loss_from_logits` (``P = e^logit/Z``,
    ``P_n = 1/n``, ``c = K·P_n + ε``, a *sum* over the K negatives, a mean over the batch) rewritten
    with ``u = logit − log Z − log c``: the positive's term ``log(P/(P+c))`` is ``−softplus(−u)``, each
    negative's ``log(K·P_n/(P+c))`` is ``κ − softplus(u)`` with the constant ``κ = log(K·P_n) −
    log(K·P_n + ε) = −log1p(ε/(K·P_n))``. Per side::

        L = (1/B)·[Σ_b softplus(−u_b0) + Σ_{b,k≥1} softplus(u_bk)] − K·κ,
        ∂L/∂logit = (σ(u) − [k = 0]) / B.

    ``K·κ`` is taken in double precision once. Equal to ``crd_loss_from_logits`` in float64 (1e-12,
    tested) and within ~1e-7 of a float64 evaluation in float32.
    """
    if logits.dim() != 3:
        raise ShapeError(f"crd_nce_terms: expected logits [S, B, K+1], got {tuple(logits.shape)}")
    b, k = logits.shape[1], logits.shape[2] - 1
    noise = k / float(n)
    z_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32  # log Z as the loss takes it
    log_z = torch.log(torch.as_tensor(Z, device=logits.device).to(z_dtype)).to(logits.dtype)
    u = logits - (log_z + math.log(noise + eps)).view(-1, 1, 1)
    value = ((F.softplus(u[..., 1:]).sum() + F.softplus(-u[..., 0]).sum()) / b
             + logits.shape[0] * k * math.log1p(eps / noise))
    if not need_grad:
        return value, None
    g = u.sigmoid_()
    g[..., 0] -= 1.0
    return value, g.div_(b)


class _NCELoss(torch.autograd.Function):
    """:func:`crd_nce_terms` as an autograd op (its gradient comes from the forward pass)."""

    @staticmethod
    def forward(ctx, logits: Tensor, Z: Tensor, n: int, eps: float) -> Tensor:
        value, g = crd_nce_terms(logits.detach(), Z, n, eps)
        ctx.save_for_backward(g)
        return value

    @staticmethod
    def backward(ctx, grad: Tensor):
        (g,) = ctx.saved_tensors
        return grad * g, None, None, None


def crd_nce_fused(logits: Tensor, Z: Tensor, n: int, eps: float = 1e-7) -> Tensor:
    """``crd_loss_from_logits(logits[0], logits[1], Z[0], Z[1], n, eps)`` (summed over the ``S`` sides)
    via :func:`crd_nce_terms`, differentiable w.r.t. ``logits [S, B, K+1]``."""
    if torch.is_grad_enabled() and logits.requires_grad:
        return _NCELoss.apply(logits, Z, n, eps)
    return crd_nce_terms(logits, Z, n, eps, need_grad=False)[0]


@torch.no_grad()
def crd_dense_logits(anchors: Sequence[Tensor], banks: Sequence[Tensor], idx: Tensor, T: float) -> Tensor:
    """``[S, B, K+1]`` logits ``⟨banks[s][idx[b, k]], anchors[s][b]⟩ / T`` without gathering a row:
    every bank row is scored with one GEMM per side (``[B, n]``), then the sampled ones are picked.
    Each picked entry is the dot product a row gather computes (no gradient: see :func:`crd_dense_grad`)."""
    out = torch.empty((len(anchors),) + tuple(idx.shape), device=idx.device, dtype=torch.float32)
    for side, (v, bank) in enumerate(zip(anchors, banks)):
        torch.gather(matmul_nt(v / T, bank), 1, idx, out=out[side])  # 1/T folded into the anchor
    return out


@torch.no_grad()
def crd_dense_grad(g: Tensor, idx: Tensor, banks: Sequence[Tensor], T: float) -> List[Tensor]:
    """``∂L/∂anchor`` of each side from ``g = ∂L/∂logits [S, B, K+1]``:
    ``∂L/∂v[b] = Σ_k g[b, k] · bank[idx[b, k]] / T``, as one scatter into ``[S, B, n]`` (repeated
    indices add up, as a gather's backward accumulates them) and one GEMM per side."""
    n = banks[0].shape[0]
    G = torch.zeros((g.shape[0], idx.shape[0], n), device=idx.device).scatter_add_(2, idx.expand_as(g), g)
    return [matmul_nt(G[side], bank.T).div_(T) for side, bank in enumerate(banks)]


class _PrecomputedGrad(torch.autograd.Function):
    """Returns ``value``; its backward hands out gradients computed already in the forward pass."""

    @staticmethod
    def forward(ctx, value: Tensor, *inputs_and_grads: Tensor) -> Tensor:
        half = len(inputs_and_grads) // 2
        ctx.save_for_backward(*inputs_and_grads[half:])
        return value.clone()

    @staticmethod
    def backward(ctx, g: Tensor):
        grads = ctx.saved_tensors
        return (None, *[g * x for x in grads], *[None] * len(grads))


def with_gradient(value: Tensor, inputs: Sequence[Tensor], grads: Sequence[Tensor]) -> Tensor:
    """``value`` as a differentiable function of ``inputs`` whose gradients are ``grads`` (already
    computed): backward multiplies them by the incoming gradient. Double backward is not supported."""
    if len(inputs) != len(grads):
        raise ValueError("with_gradient: one gradient per input")
    return _PrecomputedGrad.apply(value, *inputs, *grads)


@torch.no_grad()
def crd_log_z_stats(logits: Tensor) -> Tensor:
    """``[S, 2]``: per side of ``logits [S, B, K+1]``, ``logsumexp`` and the count of finite logits —
    what :func:`crd_estimate_z` needs, in a form that adds up over ranks (masked −∞ logits count for
    nothing)."""
    flat = logits.detach().float().flatten(1)
    count = torch.isfinite(flat).sum(1).to(flat.dtype)
    return torch.stack([torch.logsumexp(flat, 1), count], 1)


@torch.no_grad()
def crd_estimate_z(stats: Tensor, n: int) -> Tensor:
    """The reference's ``Z = mean(exp(logits)) · n`` per side, from :func:`crd_log_z_stats` of one or
    several parts (``[R, S, 2]``, e.g. one per rank) → ``[S]``, as ``exp(logsumexp − log count) · n``
    so that large logits do not overflow."""
    if stats.dim() == 2:
        stats = stats.unsqueeze(0)
    total = torch.logsumexp(stats[..., 0], 0)
    return torch.exp(total - torch.log(stats[..., 1].sum(0))) * n
