"""Logit losses after KD: DKD, DIST, CTKD's per-temperature KD, MLKD's three levels, and logit
standardisation (the z-score that any of them may apply first).

Each function states the formula and its normalisation; each was written from the authors' released
code (named in ``tests/test_logit_methods.py``, which recomputes it there) and matches it in value and
gradient. Inputs are ``[B, K]`` logits (DIST also takes dense ``[B, K, *]`` logits). The teacher is
not detached here: the caller runs it under ``no_grad``.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ShapeError

__all__ = [
    "standardize_logits",
    "dkd_loss",
    "dist_loss",
    "kd_loss_per_temperature",
    "mlkd_instance_loss",
    "mlkd_batch_loss",
    "mlkd_class_loss",
    "median_kept_fraction",
    "mlkd_levels",
]


def _same_shape(name: str, s: Tensor, t: Tensor, dims: Tuple[int, ...] = (2,)) -> None:
    if s.shape != t.shape:
        raise ShapeError(f"{name}: student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} must have "
                         "the same shape")
    if s.dim() not in dims:
        raise ShapeError(f"{name}: expects logits with {' or '.join(map(str, dims))} dimensions "
                         f"([B, K]{', [B, K, *]' if len(dims) > 1 else ''}), got {tuple(s.shape)}")


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Logit standardisation (Sun et al., CVPR 2024): the z-score of each sample's logits over the
    class dimension (dim 1)::

        z ← (z − mean_k z) / (eps + std_k z)

    with the *sample* standard deviation (``n − 1`` in the denominator, torch's default ``std``) and
    ``eps = 1e-7`` added to it, as the released code. Student and teacher are each standardised with
    their own statistics, so only the shape of a logit vector is transferred, not its scale.
    """
    if logits.dim() < 2:
        raise ShapeError(f"standardize_logits: logits need a class dimension (dim 1), got {tuple(logits.shape)}")
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True)
    return (logits - mean) / (eps + std)


def dkd_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, alpha: float = 1.0,
             beta: float = 8.0, T: float = 4.0) -> Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): ``α·TCKD + β·NCKD``, each ``× T²``, batch mean.

    With ``p = softmax(z / T)`` and ``g`` the target class:

    - TCKD = KL(b_t ‖ b_s) of the binary distributions ``b = (p_g, 1 − p_g)`` (target vs the rest);
    - NCKD = KL(p̂_t ‖ p̂_s) of the distributions over the non-target classes, ``p̂ = softmax`` of
      ``z / T`` with the target logit pushed down by 1000 (as the reference: its probability is 0).

    The binary log-probabilities come from ``log_softmax`` / ``logsumexp`` (the reference takes the
    log of summed probabilities; the same value, without ``log 0`` for a very confident network).
    """
    _same_shape("dkd_loss", student_logits, teacher_logits)
    b, k = student_logits.shape
    target = target.reshape(-1).long()
    if target.numel() != b:
        raise ShapeError(f"dkd_loss: {target.numel()} targets for a batch of {b}")
    gt = F.one_hot(target, k).bool()
    zs, zt = student_logits / T, teacher_logits / T

    def binary_log_probs(z: Tensor) -> Tensor:
        log_all = torch.logsumexp(z, dim=1, keepdim=True)
        log_target = z.gather(1, target[:, None]) - log_all
        log_other = torch.logsumexp(z.masked_fill(gt, float("-inf")), dim=1, keepdim=True) - log_all
        return torch.cat([log_target, log_other], dim=1)

    log_bs, log_bt = binary_log_probs(zs), binary_log_probs(zt)
    tckd = (log_bt.exp() * (log_bt - log_bs)).sum() / b
    log_ps = F.log_softmax(zs - 1000.0 * gt, dim=1)
    log_pt = F.log_softmax(zt - 1000.0 * gt, dim=1)
    nckd = (log_pt.exp() * (log_pt - log_ps)).sum() / b
    return (alpha * tckd + beta * nckd) * (T * T)


def _pearson_rows(a: Tensor, b: Tensor, eps: float) -> Tensor:
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float = 1.0, beta: float = 1.0,
              gamma: float = 1.0, eps: float = 1e-8) -> Tensor:
    """DIST (Huang et al., NeurIPS 2022): Pearson correlation of the softened predictions, between
    and within classes.

    With ``Y = softmax(z / τ)`` as a ``[N, K]`` matrix (dense ``[B, K, *]`` logits: one row per
    position) and ``ρ`` the Pearson correlation (cosine of the mean-centred vectors, ``eps`` added to
    the product of norms)::

        inter = 1 − mean_n ρ(Y_s[n, :], Y_t[n, :])      (each sample's class ranking)
        intra = 1 − mean_k ρ(Y_s[:, k], Y_t[:, k])      (each class over the batch)
        L = τ² · (β · inter + γ · intra)
    """
    _same_shape("dist_loss", student_logits, teacher_logits, dims=(2, 3, 4, 5))
    k = student_logits.shape[1]
    ys = F.softmax(student_logits / tau, dim=1).movedim(1, -1).reshape(-1, k)
    yt = F.softmax(teacher_logits / tau, dim=1).movedim(1, -1).reshape(-1, k)
    inter = 1 - _pearson_rows(ys, yt, eps).mean()
    intra = 1 - _pearson_rows(ys.t(), yt.t(), eps).mean()
    return tau * tau * (beta * inter + gamma * intra)


def kd_loss_per_temperature(student_logits: Tensor, teacher_logits: Tensor, T: Union[float, Tensor]) -> Tensor:
    """KD with a temperature that may be a tensor: one value (``[]`` or ``[1]``, CTKD's global
    temperature) or one per sample (``[B]`` / ``[B, 1]``, the instance-wise one)::

        L = mean_b T_b² · KL(softmax(t_b / T_b) ‖ softmax(s_b / T_b))

    A gradient reaches ``T`` (CTKD learns it). With one value this is ``kd_loss`` with that ``T``.
    """
    _same_shape("kd_loss_per_temperature", student_logits, teacher_logits)
    T = torch.as_tensor(T, dtype=student_logits.dtype, device=student_logits.device)
    if T.numel() not in (1, student_logits.shape[0]):
        raise ShapeError(f"kd_loss_per_temperature: {T.numel()} temperatures for a batch of {student_logits.shape[0]}")
    T = T.reshape(-1, 1)
    log_q = F.log_softmax(student_logits / T, dim=1)
    log_p = F.log_softmax(teacher_logits / T, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    return (kl * T.reshape(-1) ** 2).mean()


def mlkd_instance_loss(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """MLKD's instance level (Jin et al., CVPR 2023): KD at temperature ``T``, ``T²`` · KL, batch mean
    (the same as :func:`~crossdistill.losses.kd_loss`; named here for the three-level sum)."""
    return kd_loss_per_temperature(student_logits, teacher_logits, float(T))


def mlkd_batch_loss(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """MLKD's batch level: with ``P = softmax(z / T)`` (``[B, K]``), the samples' ``B × B`` similarity
    ``P Pᵀ`` must match::

        L = ||P_t P_tᵀ − P_s P_sᵀ||_F² / B
    """
    _same_shape("mlkd_batch_loss", student_logits, teacher_logits)
    ps, pt = F.softmax(student_logits / T, dim=1), F.softmax(teacher_logits / T, dim=1)
    return (pt @ pt.t() - ps @ ps.t()).pow(2).sum() / student_logits.shape[0]


def mlkd_class_loss(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """MLKD's class level: the classes' ``K × K`` co-occurrence ``Pᵀ P`` must match::

        L = ||P_tᵀ P_t − P_sᵀ P_s||_F² / K
    """
    _same_shape("mlkd_class_loss", student_logits, teacher_logits)
    ps, pt = F.softmax(student_logits / T, dim=1), F.softmax(teacher_logits / T, dim=1)
    return (pt.t() @ pt - ps.t() @ ps).pow(2).sum() / student_logits.shape[1]


def median_kept_fraction(confidence: Tensor) -> Tensor:
    """The fraction of entries at or below their median (``np.percentile(·, 50)``, linear
    interpolation) — what MLKD's confidence masks reduce to in the released code (see
    docs/zoo.md): it multiplies an already-averaged loss by a ``[B]`` (or ``[K]``) 0/1 mask and
    averages again, so the mask acts as this one factor (≈ ½), not as a per-sample selection."""
    c = confidence.detach().flatten().double()
    return (c <= torch.quantile(c, 0.5)).double().mean().to(confidence.dtype)


def mlkd_levels(student_weak: Tensor, teacher_weak: Tensor, student_strong: Tensor, teacher_strong: Tensor,
                temperatures: Sequence[float], standardize: bool = False) -> dict:
    """MLKD's three levels as the released code sums them (each term is explained in docs/zoo.md)::

        f_b = kept fraction of the teacher's weak-view max-probabilities (at or below the median)
        f_c = kept fraction of the teacher's weak-view class sums Σ_b p_bk (at or below the median)
        instance = f_b Σ_T KD_T(weak) + Σ_{T ∈ temperatures[:3]} KD_T(strong) + Σ_{T ∈ temperatures[3:]} KD_T(weak)
        class    = f_c Σ_T class_T(weak)
        batch    = f_b Σ_T batch_T(weak)

    ``KD`` runs on standardised logits when ``standardize`` (logit standardisation; the batch and
    class levels never do, as the released code). The strong view's last two temperatures read the
    *weak* view's logits, as the released code does.
    """
    pt = F.softmax(teacher_weak.detach(), dim=1)
    f_b = median_kept_fraction(pt.max(dim=1).values)
    f_c = median_kept_fraction(pt.sum(dim=0))
    kw = (standardize_logits(student_weak), standardize_logits(teacher_weak)) if standardize else (student_weak, teacher_weak)
    ks = (standardize_logits(student_strong), standardize_logits(teacher_strong)) if standardize else (student_strong, teacher_strong)
    temps = [float(T) for T in temperatures]
    instance = f_b * sum(mlkd_instance_loss(*kw, T) for T in temps)
    instance = instance + sum(mlkd_instance_loss(*ks, T) for T in temps[:3]) + sum(mlkd_instance_loss(*kw, T) for T in temps[3:])
    klass = f_c * sum(mlkd_class_loss(student_weak, teacher_weak, T) for T in temps)
    batch = f_b * sum(mlkd_batch_loss(student_weak, teacher_weak, T) for T in temps)
    return {"instance": instance, "class": klass, "batch": batch}

