"""Losses on logits (Hinton et al., 2015).

Like every function in :mod:`crossdistill.losses`, these never detach the teacher: the caller (the
``Distiller``) runs the teacher under ``no_grad``, so the same function also serves mutual learning.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..errors import ShapeError

__all__ = ["kd_loss"]


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, T: float = 4.0) -> Tensor:
    """Temperature-scaled KL divergence of the teacher's from the student's class distribution.

    With ``p = softmax(t / T)`` and ``q = softmax(s / T)`` over the class dimension (dim 1)::

        L = T² · mean_over_positions  Σ_k p_k · (log p_k − log q_k)

    ``[B, K]`` logits: the mean runs over the batch ("batchmean"). Dense ``[B, K, H, W]`` (or any
    ``[B, K, *]``) logits: the KL is taken per pixel and the mean runs over batch and pixels. The ``T²``
    keeps the gradient scale independent of ``T``. Both log-distributions come from ``log_softmax``, so
    large logits neither overflow nor produce ``0 · log 0``.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ShapeError(
            f"kd_loss: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape"
        )
    if student_logits.dim() < 2:
        raise ShapeError(f"kd_loss: logits need a class dimension (dim 1), got {tuple(student_logits.shape)}")
    log_q = F.log_softmax(student_logits / T, dim=1)
    log_p = F.log_softmax(teacher_logits / T, dim=1)
    kl_per_position = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    return kl_per_position.mean() * (T * T)
