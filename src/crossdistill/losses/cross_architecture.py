"""Losses for distillation across architecture families: DeiT's distillation-token targets and OFA's
target-enhanced loss. Logits ``[B, K]``; the teacher is never detached here (the caller runs it
under ``no_grad``).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..errors import ShapeError

__all__ = ["deit_soft_loss", "deit_hard_loss", "ofa_loss"]


def _logits_pair(name: str, s: Tensor, t: Tensor) -> None:
    if s.dim() != 2 or s.shape != t.shape:
        raise ShapeError(f"{name}: student and teacher logits must both be [B, K] with the same shape, "
                         f"got {tuple(s.shape)} and {tuple(t.shape)}")


def deit_soft_loss(student_logits: Tensor, teacher_logits: Tensor, T: float = 1.0) -> Tensor:
    """DeiT's soft distillation (Touvron et al., ICML 2021) on the distillation head's logits::

        L = T² / (B·K) · Σ_{b,k} p_{bk} (log p_{bk} − log q_{bk}),   p = softmax(t/T), q = softmax(s/T)

    — the KL summed over batch *and* classes, divided by the number of logits ``B·K`` (DeiT keeps
    PyTorch's legacy element-wise mean), i.e. :func:`~crossdistill.losses.kd_loss` divided by ``K``.
    """
    _logits_pair("deit_soft_loss", student_logits, teacher_logits)
    log_q = F.log_softmax(student_logits / T, dim=1)
    log_p = F.log_softmax(teacher_logits / T, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum() * (T * T) / student_logits.numel()


def deit_hard_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """DeiT's hard distillation (its default): cross-entropy against the teacher's decision,
    ``L = mean_b −log softmax(s_b)[argmax_k t_bk]``."""
    _logits_pair("deit_hard_loss", student_logits, teacher_logits)
    return F.cross_entropy(student_logits, teacher_logits.argmax(dim=1))


def ofa_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, eps: float = 1.0,
             T: float = 1.0) -> Tensor:
    """OFA's target-enhanced loss (Hao et al., NeurIPS 2023, "One-for-All")::

        L = mean_b Σ_k −( (p_bk + y_bk)^ε − y_bk ) · log q_bk,   p = softmax(t/T), q = softmax(s/T)

    with ``y`` the one-hot ``target`` (class indices ``[B]``). Off the target class the weight is
    ``p_k^ε``; on the target class it is ``(1 + p_y)^ε − 1``. At ``ε = 1`` both are ``p`` — plain cross-entropy with the teacher's soft
    targets; ``ε > 1`` raises the target class's weight (more when the teacher is confident in it)
    and lowers the others'. No ``T²`` factor (the reference uses ``T = 1``).
    """
    _logits_pair("ofa_loss", student_logits, teacher_logits)
    if target.dim() != 1 or target.shape[0] != student_logits.shape[0]:
        raise ShapeError(f"ofa_loss: target must be class indices [B], got {tuple(target.shape)}")
    log_q = F.log_softmax(student_logits / T, dim=1)
    p = F.softmax(teacher_logits / T, dim=1)
    y = F.one_hot(target.long(), student_logits.shape[1]).to(p.dtype)
    weight = (p + y).pow(eps) - y
    return -(weight * log_q).sum(dim=1).mean()
