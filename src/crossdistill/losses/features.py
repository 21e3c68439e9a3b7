"""Losses on intermediate feature maps: FitNet, AT, AB, FT, FSP, NST, VID.

Inputs are already projected (connectors / regressors / paraphrasers are modules elsewhere) and
already resized: a spatial mismatch raises :class:`~crossdistill.errors.ShapeError` rather than being
silently interpolated. No function detaches the teacher; the caller does.

``at_loss``, ``ab_loss``, ``nst_loss`` and ``vid_loss`` also take maps in a lower precision (bf16 from an
autocast network) and compute in float32 anyway: the upcast happens inside their first pass over
the map (a float32-accumulating norm, or an op whose other operand is float32), so no float32 copy
of a whole map is made, and their gradients come back in the map's own layout. The Distiller hands
these methods the networks' tensors as they are (``Method.float32_inputs = False``).
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, ShapeError
from ..tokens import as_map

__all__ = ["hint_loss", "attention_map", "at_loss", "ab_loss", "factor_loss", "fsp_matrix", "fsp_loss",
           "nst_loss", "vid_loss"]


def _same_shape(name: str, a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ShapeError(f"{name}: shapes {tuple(a.shape)} and {tuple(b.shape)} must match")


def _acc(x: Tensor) -> torch.dtype:
    """float32, or float64 for float64 input: the precision a loss computes in."""
    return torch.promote_types(x.dtype, torch.float32)


def _f32_diff(a: Tensor, b: Tensor) -> Tensor:
    """``a − b`` in float32 (at least): promoted inside the subtraction when one side is float32."""
    if torch.promote_types(a.dtype, b.dtype) in (torch.float32, torch.float64):
        return a - b
    return a.float() - b.float()


class _MMDPoly2(torch.autograd.Function):
    """NST's MMD² with the kernel ``(xᵀy)²`` on L2-normalised rows, forward and backward by hand.

    ``x_s``: ``[B, Cs, N]``, ``x_t``: ``[B, Ct, N]`` (computed in float32 at least). With ``A``, ``B``
    the unit rows of one sample, ``Σ_ij (a_i·b_j)² = ||A Bᵀ||²_F = <AᵀA, BᵀB>_F``, so the loss is
    computed from the ``[C, C]`` Gram matrices or, when ``N`` is the smaller side, from the ``[N, N]``
    second moments ``AᵀA/Cs − BᵀB/Ct`` (whichever needs fewer multiply-adds).

    Gram form: the rows are never normalised. The raw Grams ``R = X Yᵀ`` hold the squared norms on
    the diagonals of ``R_ss`` and ``R_tt``, and ``G = D R D`` with ``D = diag(1/‖x_i‖)``. The backward
    folds the normalisation into ``[C, C]`` matrices too: with ``∂L/∂s = α G_ss s + β G_st t``
    (α = 4/(B Cs²), β = −4/(B Cs Ct)) and ``⟨s_i, ∂L/∂s_i⟩ = c_i = α Σ_j G_ss,ij² + β Σ_j G_st,ij²``,
    the chain rule through ``s_i = x_i/‖x_i‖`` gives ``∂L/∂x_s = D_s (α G_ss − diag c) D_s x_s +
    β D_s G_st D_t x_t`` — two batched products per side and no pass over the maps besides them
    (autograd would differentiate each product's operands apart and go through the division step by step).
    """

    @staticmethod
    def forward(ctx, x_s: Tensor, x_t: Tensor) -> Tensor:
        acc = torch.promote_types(torch.promote_types(x_s.dtype, x_t.dtype), torch.float32)
        b, cs, ct, n = x_s.shape[0], x_s.shape[1], x_t.shape[1], x_s.shape[2]
        ctx.gram = cs * cs + ct * ct + cs * ct <= (cs + ct) * n
        ctx.sizes = (b, cs, ct)
        if ctx.gram:
            xs, xt = x_s.to(acc), x_t.to(acc)
            r_ss, r_tt, r_st = torch.bmm(xs, xs.transpose(1, 2)), torch.bmm(xt, xt.transpose(1, 2)), torch.bmm(xs, xt.transpose(1, 2))
            inv_s = r_ss.diagonal(dim1=1, dim2=2).sqrt().clamp_min(1e-12).reciprocal()  # [B, Cs]: 1/‖x_i‖
            inv_t = r_tt.diagonal(dim1=1, dim2=2).sqrt().clamp_min(1e-12).reciprocal()
            g_ss = r_ss * inv_s.unsqueeze(2) * inv_s.unsqueeze(1)
            g_tt = r_tt * inv_t.unsqueeze(2) * inv_t.unsqueeze(1)
            g_st = r_st * inv_s.unsqueeze(2) * inv_t.unsqueeze(1)
            loss = (g_ss.square().sum() / (b * cs * cs) + g_tt.square().sum() / (b * ct * ct)
                    - 2.0 * g_st.square().sum() / (b * cs * ct))
            ctx.save_for_backward(xs, xt, inv_s, inv_t, g_ss, g_tt, g_st)
        else:
            n_s = torch.linalg.vector_norm(x_s, 2, dim=2, keepdim=True, dtype=acc).clamp_min(1e-12)
            n_t = torch.linalg.vector_norm(x_t, 2, dim=2, keepdim=True, dtype=acc).clamp_min(1e-12)
            s, t = x_s / n_s, x_t / n_t
            d = torch.bmm(s.transpose(1, 2), s) / cs - torch.bmm(t.transpose(1, 2), t) / ct  # [B, N, N]
            loss = d.square().sum() / b
            ctx.save_for_backward(s, t, n_s, n_t, d)
        return loss

    @staticmethod
    def backward(ctx, grad: Tensor):
        b, cs, ct = ctx.sizes
        need_s, need_t = ctx.needs_input_grad[:2]
        d_s = d_t = None
        if ctx.gram:
            xs, xt, inv_s, inv_t, g_ss, g_tt, g_st = ctx.saved_tensors
            cross = -4.0 * grad / (b * cs * ct)
            sq_st = g_st.square()

            def own(g: Tensor, inv: Tensor, alpha, c: Tensor) -> Tensor:  # D (α G − diag c) D
                m = g * alpha
                m.diagonal(dim1=1, dim2=2).sub_(c)
                return m.mul_(inv.unsqueeze(2)).mul_(inv.unsqueeze(1))

            if need_s:
                alpha = 4.0 * grad / (b * cs * cs)
                c = alpha * g_ss.square().sum(2) + cross * sq_st.sum(2)
                d_s = torch.baddbmm(torch.bmm(g_st * (cross * inv_s.unsqueeze(2) * inv_t.unsqueeze(1)), xt),
                                    own(g_ss, inv_s, alpha, c), xs)
            if need_t:
                alpha = 4.0 * grad / (b * ct * ct)
                c = alpha * g_tt.square().sum(2) + cross * sq_st.sum(1)
                d_t = torch.baddbmm(torch.bmm(g_st.transpose(1, 2) * (cross * inv_t.unsqueeze(2) * inv_s.unsqueeze(1)), xs),
                                    own(g_tt, inv_t, alpha, c), xt)
            return d_s, d_t
        s, t, n_s, n_t, d = ctx.saved_tensors  # d symmetric
        if need_s:
            d_s = torch.bmm(s, d) * (4.0 * grad / (b * cs))
        if need_t:
            d_t = torch.bmm(t, d) * (-4.0 * grad / (b * ct))

        def through_normalisation(u: Tensor, du: Tensor, norm: Tensor) -> Tensor:
            # u = x / ||x||: dx = (du − u ⟨u, du⟩) / ||x||
            dot = torch.linalg.vecdot(u, du, dim=2).unsqueeze(2)
            return torch.addcmul(du, u, dot, value=-1.0).div_(norm)

        return (through_normalisation(s, d_s, n_s) if need_s else None,
                through_normalisation(t, d_t, n_t) if need_t else None)


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
    (``eps = 1e-12``). Returns ``[B, H·W]`` in float32. ``|·|`` makes odd ``p`` well-defined; for the
    default ``p = 2`` it is the reference's ``f.pow(2).mean(1)``. Computed as ``||f||_p^p`` over the
    channels (the ``1/C`` of the mean cancels in the normalisation): one float32-accumulating pass
    over the map instead of four (abs, pow, mean, and a float32 copy). Token tensors ``[B, N, C]``
    are read as their patch-token map (:func:`crossdistill.tokens.tokens_to_map`).
    """
    f = as_map(f)
    if f.dim() < 3:
        raise ShapeError(f"attention_map needs a [B, C, H, W] map, got {tuple(f.shape)}")
    am = torch.linalg.vector_norm(f, ord=p, dim=1, dtype=_acc(f)).pow(p).flatten(1)
    return F.normalize(am, p=2.0, dim=1)


def at_loss(fs: Tensor, ft: Tensor, p: float = 2.0) -> Tensor:
    """Attention transfer: ``L = mean_{b, j} (a_s[b, j] − a_t[b, j])²``.

    ``a`` is :func:`attention_map`; the mean runs over batch and the ``H·W`` positions (RepDistiller's
    ``(at(fs) − at(ft)).pow(2).mean()``). Channel counts may differ; spatial sizes must match.
    Token tensors ``[B, N, C]`` are read as their patch-token maps.
    """
    fs, ft = as_map(fs), as_map(ft)
    if fs.shape[0] != ft.shape[0] or fs.shape[2:] != ft.shape[2:]:
        raise ShapeError(
            f"at_loss: batch and spatial sizes must match (resize first), got {tuple(fs.shape)} and {tuple(ft.shape)}"
        )
    return (attention_map(fs, p) - attention_map(ft, p)).pow(2).mean()


class _ABMargin(torch.autograd.Function):
    """AB's margin loss in closed form, forward and backward by hand: with ``σ = +1`` where the
    teacher neuron is on (``t > 0``) and ``−1`` where it is off, both cases of the reference's loss
    are one hinge, ``(s + m)²·[s > −m ∧ t ≤ 0] + (s − m)²·[s ≤ m ∧ t > 0] = relu(m − σ·s)²`` (at
    ``s = ±m`` both sides are 0), and ``∂L/∂s = −2σ·relu(m − σ·s) / B``. Three passes over the map
    forward (the teacher's sign, the signed map, the hinge) and two backward, where autograd over the
    masked formula made about ten and five, each writing a fresh float32 map (docs/speed.md#ab)."""

    @staticmethod
    def forward(ctx, s: Tensor, t: Tensor, m: Union[float, Tensor]) -> Tensor:
        on = t > 0
        hinge = torch.where(on, s.neg(), s).to(_acc(s))  # −σ·s, in float32 at least
        hinge.add_(m).clamp_min_(0)                       # relu(m − σ·s)
        ctx.save_for_backward(hinge, on)
        ctx.in_dtype, ctx.batch = s.dtype, s.shape[0]
        flat = hinge.reshape(-1)
        return torch.dot(flat, flat) / ctx.batch

    @staticmethod
    def backward(ctx, grad: Tensor):
        hinge, on = ctx.saved_tensors
        g = hinge * (2.0 * grad / ctx.batch)
        return torch.where(on, g.neg(), g).to(ctx.in_dtype), None, None


def ab_loss(source: Tensor, target: Tensor, margin: Union[float, Tensor] = 1.0) -> Tensor:
    """Activation-boundary margin loss on pre-activation maps (Heo et al., 2019).

    With ``s`` the student's pre-ReLU map after the connector, ``t`` the teacher's pre-ReLU map and
    ``m`` the margin (a float, or a per-channel ``[C]`` tensor — the reference derives it from the
    teacher's BatchNorm statistics)::

        L = (1/B) Σ_elements  (s + m)² · [s > −m ∧ t ≤ 0]  +  (s − m)² · [s ≤ m ∧ t > 0]

    i.e. the student is pushed below ``−m`` where the teacher neuron is off and above ``+m`` where it is
    on; only the teacher's sign is used. Summed over all elements and divided by the batch size, as in
    the reference criterion. The reference additionally multiplies each layer's term by a per-layer
    weight and by ``3/1000``; that scaling belongs to the method, not to this function. Computed as
    the one hinge ``relu(m − σ·s)²`` (``σ`` the teacher's sign) with its gradient by hand
    (:class:`_ABMargin`); maps of a lower precision are read as they are, the sum is float32. Only
    ``source`` gets a gradient: the teacher's map enters through its sign alone, and the margin is
    a constant (the reference computes it from the teacher's statistics).
    """
    _same_shape("ab_loss", source, target)
    m = _per_channel(margin, source)
    if isinstance(m, Tensor):
        m = m.detach().to(_acc(source))
    return _ABMargin.apply(source, target.detach(), m)


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
    may differ; spatial sizes must match. Computed in float32 (float64 for float64 input) with a
    hand-written backward (``_MMDPoly2``). Token tensors ``[B, N, C]`` are read as their patch-token maps.
    """
    fs, ft = as_map(fs), as_map(ft)
    if fs.shape[0] != ft.shape[0] or fs.shape[2:] != ft.shape[2:]:
        raise ShapeError(
            f"nst_loss: batch and spatial sizes must match (resize first), got {tuple(fs.shape)} and {tuple(ft.shape)}"
        )
    return _MMDPoly2.apply(fs.flatten(2), ft.flatten(2))


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
    acc = torch.promote_types(torch.promote_types(teacher.dtype, student_mean.dtype), torch.float32)
    if not isinstance(log_scale, Tensor):
        log_scale = torch.tensor(float(log_scale), dtype=acc, device=teacher.device)
    var = F.softplus(log_scale.to(acc)) + eps
    if var.dim() == 1 and teacher.dim() >= 2 and var.numel() == teacher.shape[1]:
        return _PerChannelGaussianNLL.apply(teacher, student_mean, var)
    diff = _f32_diff(teacher, student_mean)
    var = _per_channel(var, diff)
    return (0.5 * (diff.pow(2) / var + torch.log(var))).mean()


class _PerChannelGaussianNLL(torch.autograd.Function):
    """``vid_loss`` with one variance per channel, forward and backward by hand.

    ``L = (1/N) Σ 0.5 (t − μ)² / σ²_c + 0.5 mean_c log σ²_c`` (every channel has the same number of
    elements, so the mean of ``log σ²`` over elements is its mean over channels). Forward: the
    difference (in float32 at least) and its per-channel sums of squares; backward: one scaled copy
    of the difference per input that needs a gradient — where autograd would go through the
    subtraction, the square, the division and the mean one pass each way.
    """

    @staticmethod
    def forward(ctx, target: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        diff = _f32_diff(target, mean)
        dims = [d for d in range(diff.dim()) if d != 1]
        sum_sq = torch.linalg.vector_norm(diff, 2, dim=dims).square()
        n = diff.numel()
        ctx.save_for_backward(diff, var, sum_sq)
        ctx.n = n
        return 0.5 * (sum_sq / var).sum() / n + 0.5 * torch.log(var).mean()

    @staticmethod
    def backward(ctx, grad: Tensor):
        diff, var, sum_sq = ctx.saved_tensors
        n, c = ctx.n, var.numel()
        shape = [1, c] + [1] * (diff.dim() - 2)
        scale = (grad / (var * n)).view(shape)  # ∂L/∂t = (t − μ) / (σ² N)
        g_target = diff * scale if ctx.needs_input_grad[0] else None
        g_mean = diff * (-scale) if ctx.needs_input_grad[1] else None
        g_var = grad * 0.5 * (1.0 / (c * var) - sum_sq / (n * var * var)) if ctx.needs_input_grad[2] else None
        return g_target, g_mean, g_var
