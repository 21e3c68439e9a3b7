"""Losses on intermediate feature maps: FitNet, AT, AB, FT, FSP, NST, VID.

Inputs are already projected (connectors / regressors / paraphrasers are modules elsewhere) and
already resized: a spatial mismatch raises :class:`~crossdistill.errors.ShapeError` rather than being
silently interpolated. No function detaches the teacher; the caller does.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, ShapeError


def _same_shape(name: str, a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ShapeError(f"{name}: shapes {tuple(a.shape)} and {tuple(b.shape)} must match")


def _per_channel(value: Union[float, Tensor], like: Tensor) -> Union[float, Tensor]:
    """A float, or a tensor broadcast over ``like``; a 1-D length-C tensor is laid on dim 1."""
    if isinstance(value, Tensor) and value.dim() == 1 and like.dim() >= 2 and value.numel() == like.shape[1]:
        return value.view(1, -1, *([1] * (like.dim() - 2)))
    return value


def hint_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """FitNet hint: mean squared error over all elements, ``L = mean_i (s_i − t_i)²``."""
    _same_shape("hint_loss", student, teacher)
    return F.mse_loss(student, teacher, reduction="mean")


def attention_map(f: Tensor, p: float = 2.0) -> Tensor:
    """Spatial attention map of a ``[B, C, H, W]`` feature (Zagoruyko & Komodakis).

    ``a_b = normalize( mean_c |f_{b,c}|^p  flattened to H·W )`` with L2 normalisation per sample
    (``eps = 1e-12``). Returns ``[B, H·W]``. ``|·|`` makes odd ``p`` well-defined; for the default
    ``p = 2`` it is the reference's ``f.pow(2).mean(1)``.
    """
    if f.dim() < 3:
        raise ShapeError(f"attention_map needs a [B, C, H, W] map, got {tuple(f.shape)}")
    am = f.abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(am, p=2.0, dim=1)


def at_loss(fs: Tensor, ft: Tensor, p: float = 2.0) -> Tensor:
    """Attention transfer: ``L = mean_{b, j} (a_s[b, j] − a_t[b, j])²``.

    ``a`` is :func:`attention_map`; the mean runs over batch and the ``H·W`` positions (RepDistiller's
    ``(at(fs) − at(ft)).pow(2).mean()``). Channel counts may differ; spatial sizes must match.
    """
    if fs.shape[0] != ft.shape[0] or fs.shape[2:] != ft.shape[2:]:
        raise ShapeError(
            f"at_loss: batch and spatial sizes must match (resize first), got {tuple(fs.shape)} and {tuple(ft.shape)}"
        )
    return (attention_map(fs, p) - attention_map(ft, p)).pow(2).mean()


def ab_loss(source: Tensor, target: Tensor, margin: Union[float, Tensor] = 1.0) -> Tensor:
    """Activation-boundary margin loss on pre-activation maps (Heo et al., 2019).

    With ``s`` the student's pre-ReLU map after the connector, ``t`` the teacher's pre-ReLU map and
    ``m`` the margin (a float, or a per-channel ``[C]`` tensor — the reference derives it from the
    teacher's BatchNorm statistics)::

        L = (1/B) Σ_elements  (s + m)² · [s > −m ∧ t ≤ 0]  +  (s − m)² · [s ≤ m ∧ t > 0]

    i.e. the student is pushed below ``−m`` where the teacher neuron is off and above ``+m`` where it is
    on; only the teacher's sign is used. Summed over all elements and divided by the batch size, as in
    the reference criterion. The reference additionally multiplies each layer's term by a per-layer
    weight and by ``3/1000``; that scaling belongs to the method, not to this function.
    """
    _same_shape("ab_loss", source, target)
    m = _per_channel(margin, source)
    teacher_on = target > 0
    push_down = ((source > -m) & ~teacher_on).to(source.dtype)
    push_up = ((source <= m) & teacher_on).to(source.dtype)
    loss = (source + m).pow(2) * push_down + (source - m).pow(2) * push_up
    return loss.sum() / source.shape[0]


def factor_loss(factor_s: Tensor, factor_t: Tensor, p: int = 1, reduction: str = "batchmean") -> Tensor:
    """Factor transfer (Kim et al., 2018): distance between L2-normalised flattened factors.

    With ``u_b = F_s[b] / ||F_s[b]||₂`` and ``v_b = F_t[b] / ||F_t[b]||₂`` (flattened, ``eps = 1e-12``):

    - ``reduction="batchmean"`` (default, the paper's loss): ``L = mean_b ||u_b − v_b||_p``, the L_p
      *distance* (``p = 1``: Σ|·|; ``p = 2``: the Euclidean norm, not squared).
    - ``reduction="mean"`` (RepDistiller's scale, which its ``β = 200`` assumes): ``p = 1``:
      ``mean_{b,i} |u − v|``; ``p = 2``: ``mean_{b,i} (u − v)²``. Equals the ``batchmean`` value
      divided by the factor dimension D for ``p = 1``.
    """
    _same_shape("factor_loss", factor_s, factor_t)
    if p not in (1, 2):
        raise ConfigError(f"factor_loss: p must be 1 or 2, got {p}")
    u = F.normalize(factor_s.flatten(1), p=2.0, dim=1)
    v = F.normalize(factor_t.flatten(1), p=2.0, dim=1)
    diff = u - v
    if reduction == "batchmean":
        if p == 1:
            return diff.abs().sum(dim=1).mean()
        return torch.linalg.vector_norm(diff, ord=2, dim=1).mean()
    if reduction == "mean":
        return diff.abs().mean() if p == 1 else diff.pow(2).mean()
    raise ConfigError(f"factor_loss: reduction must be 'batchmean' or 'mean', got {reduction!r}")


def fsp_matrix(f1: Tensor, f2: Tensor) -> Tensor:
    """Flow of solution procedure (Yim et al., 2017): ``G[b, i, j] = (1/(H·W)) Σ_{h,w} f1[b,i,h,w]·f2[b,j,h,w]``.

    ``f1``: ``[B, C1, H, W]``, ``f2``: ``[B, C2, H, W]`` → ``[B, C1, C2]``.
    """
    if f1.dim() < 3 or f1.shape[0] != f2.shape[0] or f1.shape[2:] != f2.shape[2:]:
        raise ShapeError(
            f"fsp_matrix: maps need the same batch and spatial size (pool first), got {tuple(f1.shape)} and {tuple(f2.shape)}"
        )
    a = f1.flatten(2)
    b = f2.flatten(2)
    return torch.bmm(a, b.transpose(1, 2)) / a.shape[2]


def fsp_loss(
    s_pairs: Sequence[Tuple[Tensor, Tensor]], t_pairs: Sequence[Tuple[Tensor, Tensor]]
) -> Tensor:
    """FSP loss: ``L = (1/P) Σ_pairs mean_{b,i,j} (G_s[b,i,j] − G_t[b,i,j])²``.

    Each pair is ``(f1, f2)`` of two maps of one network with the same spatial size; ``G`` is
    :func:`fsp_matrix`. The mean over the ``P`` pairs is this project's choice; RepDistiller sums the
    per-pair terms (so its ``β = 50`` corresponds to ``50·P`` here).
    """
    if len(s_pairs) != len(t_pairs) or len(s_pairs) == 0:
        raise ShapeError(f"fsp_loss: need the same non-zero number of pairs, got {len(s_pairs)} and {len(t_pairs)}")
    terms = []
    for (s1, s2), (t1, t2) in zip(s_pairs, t_pairs):
        gs = fsp_matrix(s1, s2)
        gt = fsp_matrix(t1, t2)
        _same_shape("fsp_loss (FSP matrices; channel counts must match)", gs, gt)
        terms.append((gs - gt).pow(2).mean())
    return torch.stack(terms).mean()


def nst_loss(fs: Tensor, ft: Tensor) -> Tensor:
    """Neuron selectivity transfer (Huang & Wang, 2017): MMD² with the kernel ``k(x, y) = (xᵀy)²``.

    Each channel's ``H·W`` map is a sample, L2-normalised: ``s_i = fs[b, i] / ||fs[b, i]||``. Then::

        L = mean_{b,i,j} k(s_i, s_j) + mean_{b,i,j} k(t_i, t_j) − 2 · mean_{b,i,j} k(s_i, t_j)

    (polynomial kernel of degree 2 with ``c = 0``; means over batch and channel pairs). Channel counts
    may differ; spatial sizes must match.
    """
    if fs.shape[0] != ft.shape[0] or fs.shape[2:] != ft.shape[2:]:
        raise ShapeError(
            f"nst_loss: batch and spatial sizes must match (resize first), got {tuple(fs.shape)} and {tuple(ft.shape)}"
        )
    s = F.normalize(fs.flatten(2), p=2.0, dim=2)
    t = F.normalize(ft.flatten(2), p=2.0, dim=2)

    def k(a: Tensor, b: Tensor) -> Tensor:
        return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()

    return k(s, s) + k(t, t) - 2.0 * k(s, t)


def vid_loss(student_mean: Tensor, teacher: Tensor, log_scale: Tensor, eps: float = 1e-5) -> Tensor:
    """Variational information distillation (Ahn et al., 2019): Gaussian NLL with learnt variance.

    ``μ`` = ``student_mean`` (the regressor's output), ``t`` = the teacher feature, and a per-channel
    variance parametrised as ``σ²_c = softplus(log_scale_c) + eps`` (despite the reference's name,
    ``log_scale`` is the softplus pre-activation, not ``log σ``; ``eps`` keeps ``σ² > 0``)::

        L = mean_{b,c,h,w} 0.5 · ( (t − μ)² / σ²_c + log σ²_c )

    (the constant ``0.5·log 2π`` is dropped). ``log_scale`` has shape ``[C]`` (laid on dim 1) or
    broadcasts against the features. The reference initialises it to ``log(exp(5 − eps) − 1)``, i.e.
    ``σ² = 5``.
    """
    _same_shape("vid_loss", student_mean, teacher)
    var = F.softplus(_per_channel(log_scale, student_mean)) + eps
    return (0.5 * ((teacher - student_mean).pow(2) / var + torch.log(var))).mean()
