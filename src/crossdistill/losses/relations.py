"""Relational losses: what matters is how samples of a batch relate, not the features themselves.

SP, CC, RKD (distance + angle), PKT. Every input is flattened to ``[B, D]`` per network, so student
and teacher dimensions may differ (except where a function says otherwise). The teacher is not
detached here; the caller does that.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, ShapeError

__all__ = ["sp_loss", "cc_loss", "rkd_distance_loss", "rkd_angle_loss", "rkd_loss", "pkt_loss"]


def _batch_match(name: str, a: Tensor, b: Tensor) -> None:
    if a.shape[0] != b.shape[0]:
        raise ShapeError(f"{name}: batch sizes differ ({a.shape[0]} vs {b.shape[0]})")


def sp_loss(fs: Tensor, ft: Tensor) -> Tensor:
    """Similarity-preserving KD (Tung & Mori, 2019).

    With ``F`` the batch flattened to ``[B, D]`` and ``G = row_normalize(F Fᵀ)`` (each row of the B×B
    Gram L2-normalised, ``eps = 1e-12``)::

        L = ||G_s − G_t||_F² / B²
    """
    _batch_match("sp_loss", fs, ft)
    b = fs.shape[0]
    s = fs.flatten(1)
    t = ft.flatten(1)
    gs = F.normalize(s @ s.t(), p=2.0, dim=1)
    gt = F.normalize(t @ t.t(), p=2.0, dim=1)
    return (gs - gt).pow(2).sum() / (b * b)


def _correlation(e: Tensor, kernel: str, gamma: float, order: int) -> Tensor:
    gram = e @ e.t()
    if kernel == "linear":
        return gram
    if kernel == "gaussian":
        # exp(-γ||x−y||²) = exp(-γ||x||²) exp(-γ||y||²) exp(2γ xᵀy), the last factor Taylor-expanded.
        sq = e.pow(2).sum(dim=1)
        series = torch.zeros_like(gram)
        term = torch.ones_like(gram)
        for p in range(order + 1):
            if p > 0:
                term = term * (2.0 * gamma) * gram / p
            series = series + term
        scale = torch.exp(-gamma * sq)
        return scale[:, None] * series * scale[None, :]
    raise ConfigError(f"cc_loss: kernel must be 'linear' or 'gaussian', got {kernel!r}")


def cc_loss(es: Tensor, et: Tensor, kernel: str = "linear", gamma: float = 0.4, order: int = 2) -> Tensor:
    """Correlation congruence (Peng et al., 2019) on embeddings ``[B, D]``.

    ``C[i, j] = k(e_i, e_j)`` over the batch, then the mean over the B×B entries::

        L = ||C_s − C_t||_F² / B²

    ``kernel="linear"`` (default): ``k(x, y) = xᵀy`` — with the usual L2-normalised 128-d embeddings
    this is the cosine-similarity matrix. ``kernel="gaussian"``: the paper's
    ``exp(−γ||x − y||²)`` with ``exp(2γ xᵀy)`` replaced by its Taylor series up to ``order``.
    RepDistiller's ``Correlation`` criterion computes something else
    (``mean_b Σ_d |Δ_b,d|·|Δ_{b+1},d|`` with ``Δ = e_s − e_t``); its ``β = 0.02`` does not carry over.
    Student and teacher embedding dimensions may differ.
    """
    _batch_match("cc_loss", es, et)
    b = es.shape[0]
    cs = _correlation(es.flatten(1), kernel, gamma, order)
    ct = _correlation(et.flatten(1), kernel, gamma, order)
    return (cs - ct).pow(2).sum() / (b * b)


def _pairwise_distance(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances ``[B, B]``, exactly 0 on the diagonal, with finite gradients everywhere."""
    sq = x.pow(2).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())).clamp(min=eps)
    off_diag = 1.0 - torch.eye(x.shape[0], dtype=x.dtype, device=x.device)
    return d2.sqrt() * off_diag


def _mean_normalised_distance(x: Tensor) -> Tensor:
    d = _pairwise_distance(x)
    positive = (d > 0).to(d.dtype)
    mean = (d * positive).sum() / positive.sum().clamp(min=1.0)
    return d / (mean + 1e-12)


def rkd_distance_loss(fs: Tensor, ft: Tensor) -> Tensor:
    """RKD distance potential (Park et al., 2019).

    ``ψ(i, j) = ||x_i − x_j|| / μ`` with ``μ`` the mean of the non-zero pairwise distances of the batch::

        L = mean_{i, j} huber(ψ_s(i, j) − ψ_t(i, j))

    ``huber`` is smooth-L1 with ``δ = 1`` (``0.5·x²`` if ``|x| < 1`` else ``|x| − 0.5``). The mean runs over
    all B² ordered pairs, the zero diagonal included, as in both reference implementations.
    """
    _batch_match("rkd_distance_loss", fs, ft)
    ds = _mean_normalised_distance(fs.flatten(1))
    dt = _mean_normalised_distance(ft.flatten(1))
    return F.smooth_l1_loss(ds, dt, reduction="mean", beta=1.0)


def _angles(x: Tensor) -> Tensor:
    # diff[i, j] = x_j − x_i; cos[i, j, k] = angle at vertex i between x_j and x_k.
    diff = F.normalize(x[None, :, :] - x[:, None, :], p=2.0, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2))


def rkd_angle_loss(fs: Tensor, ft: Tensor) -> Tensor:
    """RKD angle potential (Park et al., 2019).

    ``ψ(i, j, k) = cos∠(x_j − x_i, x_k − x_i)`` (0 when ``j = i`` or ``k = i``, where the difference is
    the zero vector; 1 when ``j = k ≠ i``)::

        L = mean_{i, j, k} huber(ψ_s(i, j, k) − ψ_t(i, j, k))

    over all B³ ordered triplets, as in the references. Memory is ``O(B²·D + B³)``.
    """
    _batch_match("rkd_angle_loss", fs, ft)
    return F.smooth_l1_loss(_angles(fs.flatten(1)), _angles(ft.flatten(1)), reduction="mean", beta=1.0)


def rkd_loss(fs: Tensor, ft: Tensor, w_dist: float = 25.0, w_angle: float = 50.0) -> Tensor:
    """Relational KD: ``L = w_dist · rkd_distance_loss + w_angle · rkd_angle_loss`` (reference 25 / 50)."""
    return w_dist * rkd_distance_loss(fs, ft) + w_angle * rkd_angle_loss(fs, ft)


def pkt_loss(fs: Tensor, ft: Tensor, eps: float = 1e-7, reduction: str = "batchmean") -> Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas, 2018) with the cosine kernel.

    ``x̂_i = x_i / (||x_i|| + eps)``, ``K[i, j] = (x̂_iᵀ x̂_j + 1) / 2`` ∈ [0, 1], and the conditional
    distributions ``p[i, j] = K[i, j] / Σ_j K[i, j]`` (row-normalised). Then, with ``q`` from the student
    and ``p`` from the teacher::

        L = mean_i Σ_j p[i, j] · log((p[i, j] + eps) / (q[i, j] + eps))         (reduction="batchmean")

    i.e. KL(p_i || q_i) summed per row, averaged over rows. ``reduction="mean"`` divides by another B
    (the mean over all B² entries), which is RepDistiller's scale and what its ``β = 30000`` assumes.
    """
    _batch_match("pkt_loss", fs, ft)

    def conditional(x: Tensor) -> Tensor:
        x = x.flatten(1)
        x = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + eps)
        k = (x @ x.t() + 1.0) / 2.0
        return k / k.sum(dim=1, keepdim=True)

    q = conditional(fs)
    p = conditional(ft)
    kl = p * (torch.log(p + eps) - torch.log(q + eps))
    if reduction == "batchmean":
        return kl.sum(dim=1).mean()
    if reduction == "mean":
        return kl.mean()
    raise ConfigError(f"pkt_loss: reduction must be 'batchmean' or 'mean', got {reduction!r}")

