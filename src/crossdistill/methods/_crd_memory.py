"""CRD's state: the negative sampler, the two memory banks (or a queue), and the normalisers ``Z``.

Kept apart from :mod:`crossdistill.methods.crd` (which owns the embedding heads and the options) so
the expensive part — scoring ``B × (K+1)`` bank rows per step — can be read, tested and benchmarked
on its own. The leading underscore keeps this module out of the method registry.

Logits of both directions travel as one ``[2, B, K+1]`` tensor: side 0 scores the *student* anchor
against teacher-bank rows (the reference's ``out_v1``), side 1 the *teacher* anchor against
student-bank rows; column 0 is the positive.

Two scoring implementations give the same numbers (see ``docs/crd.md``):

- ``"gather"`` — the reference: copy the ``[B, K+1, D]`` bank rows, ``bmm`` with the anchors, and
  let autograd differentiate. At the defaults that is 1M rows = 512 MiB per bank per step, written
  and read back twice (forward and backward): memory-bound.
- ``"dense"`` — score *every* bank row, ``S = (v/T) @ bankᵀ`` (``[B, n]``, one GEMM), then pick the
  sampled entries, ``logits = gather(S, idx)``. Each logit is the same dot product, so the loss is
  the same up to float rounding. The gradient w.r.t. ``v`` is built in the same call: the loss's
  gradient w.r.t. the logits (closed form, :func:`nce_terms`) is scattered into a ``[B, n]`` matrix
  ``G`` (repeated indices add up, as in the gather's backward) and ``∂L/∂v = G @ bank / T`` — a
  second GEMM. The returned loss carries that gradient (:class:`_PrecomputedGrad`), so nothing holds
  on to the bank and the momentum update may overwrite it in place straight away. (Double backward
  through CRD is not supported; nothing in distillation needs it.)
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..engine.distributed import world_info
from ..errors import ConfigError
from ..losses import crd_logits

IMPLS = ("dense", "gather")


# ------------------------------------------------------------------------------ small helpers

_ONEDNN_OK: Optional[bool] = None


def _onednn_available() -> bool:
    """Whether torch's oneDNN linear kernel is there and agrees with ``torch.mm`` (checked once).

    It is a private op (Inductor's), hence the self-check and the fallback; on the x86 CPU we
    measured it runs these ``[B, D] × [D, n]`` float32 GEMMs about 2× faster than MKL's sgemm.
    """
    global _ONEDNN_OK
    if _ONEDNN_OK is None:
        try:
            op = torch.ops.mkldnn._linear_pointwise
            g = torch.Generator().manual_seed(0)
            x, w, y = (torch.randn(5, 7, generator=g), torch.randn(11, 7, generator=g),
                       torch.randn(5, 11, generator=g))
            _ONEDNN_OK = bool(torch.backends.mkldnn.is_available()) and torch.allclose(
                op(x, w, None, "none", [], ""), x @ w.T, rtol=1e-5, atol=1e-5) and torch.allclose(
                op(y, w.T, None, "none", [], ""), y @ w, rtol=1e-5, atol=1e-5)  # a transposed weight too
        except Exception:  # absent, or another signature in this torch version
            _ONEDNN_OK = False
    return _ONEDNN_OK


def matmul_nt(x: Tensor, w: Tensor) -> Tensor:
    """``x @ w.T`` in float32 — through oneDNN on CPU when available (same numbers, faster)."""
    if x.device.type == "cpu" and x.dtype == w.dtype == torch.float32 and _onednn_available():
        return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    return x @ w.T


def init_rows(n: int, dim: int, generator: torch.Generator, device=None) -> Tensor:
    """Rows uniform in ``±1/√(dim/3)`` (the reference's bank init; not normalised)."""
    stdv = 1.0 / math.sqrt(dim / 3.0)
    rows = torch.rand(n, dim, generator=generator).mul_(2 * stdv).add_(-stdv)
    return rows.to(device) if device is not None else rows


def last_occurrence(idx: Tensor) -> Tensor:
    """Positions of the last occurrence of every distinct value of ``idx`` (1-D).

    The reference's ``index_copy_`` with a repeated index keeps the last row on CPU and an arbitrary
    one on CUDA; writing only these positions makes the update deterministic everywhere, so banks
    stay bitwise identical across DDP ranks even when a padded sampler repeats an index.
    """
    uniq, inverse = torch.unique(idx, return_inverse=True)
    pos = torch.arange(idx.numel(), device=idx.device)
    last = torch.full((uniq.numel(),), -1, dtype=torch.long, device=idx.device)
    return last.scatter_reduce_(0, inverse, pos, reduce="amax", include_self=True)


@torch.no_grad()
def momentum_update(bank: Tensor, idx: Tensor, v: Tensor, m: float) -> None:
    """``bank[idx] ← normalise(m·bank[idx] + (1−m)·v)`` in place (no grad)."""
    keep = last_occurrence(idx)
    idx, v = idx[keep], v[keep]
    rows = bank.index_select(0, idx).mul_(m).add_(v.to(bank.dtype), alpha=1.0 - m)
    bank.index_copy_(0, idx, F.normalize(rows, dim=1))


def gather_ranks(*tensors: Tensor) -> List[Tensor]:
    """Concatenate each tensor over all ranks along dim 0 (batch sizes may differ between ranks).

    Rank order, so every rank ends with the same tensors — the basis of identical banks. Alone, the
    tensors themselves.
    """
    rank, world = world_info()
    if world == 1:
        return list(tensors)
    device = tensors[0].device
    size = torch.tensor([tensors[0].shape[0]], device=device, dtype=torch.long)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    top = max(counts)
    out = []
    for x in tensors:
        pad = x.new_zeros((top - x.shape[0],) + tuple(x.shape[1:]))
        padded = torch.cat([x.detach(), pad], 0).contiguous()
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        out.append(torch.cat([p[:c] for p, c in zip(parts, counts)], 0))
    return out


@torch.no_grad()
def estimate_z(logits: Tensor, n: int) -> Tensor:
    """``mean(exp(logits)) · n`` per side of ``logits [S, B, K+1]`` over every rank → ``[S]`` (float32).

    Computed as ``exp(logsumexp − log count) · n`` so that large logits do not overflow; masked
    (−∞) logits count for nothing. Under DDP the per-rank (logsumexp, count) pairs are gathered, so
    Z is identical on every rank.
    """
    flat = logits.detach().float().flatten(1)
    count = torch.isfinite(flat).sum(1).to(flat.dtype)
    stats = torch.stack([torch.logsumexp(flat, 1), count], 1).unsqueeze(0)  # [1, S, 2]
    (stats,) = gather_ranks(stats)
    total = torch.logsumexp(stats[..., 0], 0)
    return torch.exp(total - torch.log(stats[..., 1].sum(0))) * n


def broadcast_state(module: nn.Module) -> None:
    """Copy every buffer of ``module`` from rank 0 (once, at the first step under DDP)."""
    rank, world = world_info()
    if world == 1:
        return
    for buf in module.buffers():
        dist.broadcast(buf, 0)


# ------------------------------------------------------------------------------ the NCE loss

def nce_terms(logits: Tensor, Z: Tensor, n: int, eps: float = 1e-7,
              need_grad: bool = True) -> Tuple[Tensor, Optional[Tensor]]:
    """CRD's NCE loss on ``logits [S, B, K+1]`` (``S`` sides, normalisers ``Z [S]``), summed over the
    sides, and its gradient w.r.t. the logits — in four fused passes.

    The formula of :func:`~crossdistill.losses.crd_nce_loss` / ``crd_loss_from_logits`` (``P = e^logit/Z``,
    ``P_n = 1/n``, ``c = K·P_n + ε``, a *sum* over the K negatives, a mean over the batch) rewritten
    with ``u = logit − log Z − log c``: the positive's term ``log(P/(P+c))`` is ``−softplus(−u)``, each
    negative's ``log(K·P_n/(P+c))`` is ``κ − softplus(u)`` with the constant ``κ = log(K·P_n) −
    log(K·P_n + ε) = −log1p(ε/(K·P_n))``. Per side::

        L = (1/B)·[Σ_b softplus(−u_b0) + Σ_{b,k≥1} softplus(u_bk)] − K·κ,
        ∂L/∂logit = (σ(u) − [k = 0]) / B.

    Four passes over the logits instead of about a dozen for the value plus autograd's backward, and
    ``K·κ`` is taken in double precision once: ``crd_loss_from_logits`` forms ``κ`` per negative in
    float32 as a difference of two ≈ −1.1 numbers, which biases the float32 loss by ~7e-5 relative at
    K = 16384. Equal to ``crd_loss_from_logits`` wherever that is exact (float64; tested), and within
    1e-6 of a float64 evaluation in float32.
    """
    if logits.dim() != 3:
        raise ValueError(f"nce_terms: expected logits [S, B, K+1], got {tuple(logits.shape)}")
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
    """:func:`nce_terms` as an autograd op (its gradient comes from the forward pass)."""

    @staticmethod
    def forward(ctx, logits: Tensor, Z: Tensor, n: int, eps: float) -> Tensor:
        value, g = nce_terms(logits.detach(), Z, n, eps)
        ctx.save_for_backward(g)
        return value

    @staticmethod
    def backward(ctx, grad: Tensor):
        (g,) = ctx.saved_tensors
        return grad * g, None, None, None


def crd_nce_fused(logits: Tensor, Z: Tensor, n: int, eps: float = 1e-7) -> Tensor:
    """``crd_loss_from_logits(logits[0], logits[1], Z[0], Z[1], n, eps)`` via :func:`nce_terms`,
    differentiable w.r.t. ``logits [2, B, K+1]``."""
    if torch.is_grad_enabled() and logits.requires_grad:
        return _NCELoss.apply(logits, Z, n, eps)
    return nce_terms(logits, Z, n, eps, need_grad=False)[0]


class _PrecomputedGrad(torch.autograd.Function):
    """Returns ``value``; its backward hands out gradients computed already in the forward pass."""

    @staticmethod
    def forward(ctx, value: Tensor, v_s: Tensor, v_t: Tensor, grad_s: Tensor, grad_t: Tensor) -> Tensor:
        ctx.save_for_backward(grad_s, grad_t)
        return value.clone()

    @staticmethod
    def backward(ctx, g: Tensor):
        grad_s, grad_t = ctx.saved_tensors
        return None, g * grad_s, g * grad_t, None, None


# ------------------------------------------------------------------------------ sampling

class NegativeSampler(nn.Module):
    """Draws the ``[B, K+1]`` contrast indices (column 0 = positive) on the device, vectorised.

    The data set's indices are sorted by class once (``order``; ``start``/``count`` per class). Read
    as a circle, the samples of the *other* classes are the ``n − count_c`` positions after the
    anchor's class block; a draw ``r`` uniform in ``[0, n − count_c)`` becomes
    ``order[(start_c + count_c + r) mod n]`` — exactly uniform over the other classes, with
    replacement (as the reference), in a handful of passes. Without labels, negatives are uniform over
    every index but the anchor's own (the same circle trick around the anchor). ``relax`` takes the
    positive uniformly from the anchor's class (possibly itself). The tables are non-persistent
    buffers: they follow ``.to(device)`` and are rebuilt from :class:`DataSetup`, not saved.
    """

    def __init__(self):
        super().__init__()
        self.n: Optional[int] = None
        self.has_labels = False
        for name in ("order", "class_of", "start", "count"):
            self.register_buffer(name, torch.zeros(0, dtype=torch.long), persistent=False)

    def set_data(self, n: int, labels: Optional[Tensor], device=None) -> None:
        device = device if device is not None else self.order.device
        if n < 2:
            raise ConfigError(f"crd needs at least 2 training samples, got num_samples={n}")
        self.n = int(n)
        if labels is None:
            self.has_labels = False
            return
        labels = torch.as_tensor(labels).long().flatten().cpu()
        if labels.numel() != n:
            raise ConfigError(f"crd: DataSetup.labels has {labels.numel()} entries but num_samples={n}; "
                              "give one class label per training sample")
        _, class_of = torch.unique(labels, return_inverse=True)
        count = torch.bincount(class_of)
        if int(count.max()) == n:
            raise ConfigError("crd draws negatives from the other classes, but every training sample has the same "
                              "class; give labels=None to draw from all other samples")
        self.order = torch.argsort(class_of, stable=True).to(device)
        self.class_of = class_of.to(device)
        self.count = count.to(device)
        self.start = (torch.cumsum(count, 0) - count).to(device)
        self.has_labels = True

    @staticmethod
    def _uniform_below(high: Tensor, k: int) -> Tensor:
        """``[B, k]`` integers, row ``b`` uniform in ``[0, high[b])`` (modulo bias ≤ high/2⁶²)."""
        r = torch.randint(0, 2 ** 62, (high.shape[0], k), device=high.device)
        return r.remainder_(high.unsqueeze(1))

    def sample(self, index: Tensor, k: int, mode: str = "exact") -> Tensor:
        if self.n is None:
            raise RuntimeError("NegativeSampler.set_data was never called")
        index = index.long().flatten()
        b, n = index.shape[0], self.n
        # K+1 draws per row; column 0 is then overwritten by the positive (no concatenation pass)
        if not self.has_labels:
            if mode == "relax":
                raise ConfigError("crd mode=relax draws a same-class positive and needs the class labels: "
                                  "pass DataSetup(labels=...)")
            out = self._uniform_below(torch.full_like(index, n - 1), k + 1)
            out.add_((index + 1).unsqueeze(1)).remainder_(n)  # the n−1 positions after the anchor
            out[:, 0] = index
            return out
        c = self.class_of[index]
        cnt, st = self.count[c], self.start[c]
        pos = self._uniform_below(n - cnt, k + 1)
        pos.add_((st + cnt).unsqueeze(1)).remainder_(n)  # the positions after the anchor's class block
        out = self.order.index_select(0, pos.view(-1)).view(b, k + 1)
        if mode == "relax":
            out[:, 0] = self.order[st + self._uniform_below(cnt, 1).squeeze(1)]
        else:
            out[:, 0] = index
        return out


# ------------------------------------------------------------------------------ Z

class _Normalisers(nn.Module):
    """The buffers ``Z_s``, ``Z_t`` (``< 0`` = not estimated yet) and how they evolve.

    ``fixed`` (reference): estimated once, on the first training batch, as ``mean(exp(logits))·n``.
    ``running``: after that first estimate, an EMA ``Z ← μ·Z + (1−μ)·Ẑ_batch`` every training step.
    Outside training nothing is stored; an unknown Z is then estimated from the batch for that call.
    """

    def __init__(self, z_mode: str, z_momentum: float):
        super().__init__()
        self.z_mode, self.z_momentum = z_mode, float(z_momentum)
        self.register_buffer("Z_s", torch.tensor(-1.0))
        self.register_buffer("Z_t", torch.tensor(-1.0))
        self._z_known: Optional[bool] = None  # cached so that a step reads no scalar from the device

    def _load_from_state_dict(self, *args, **kwargs):
        self._z_known = None
        super()._load_from_state_dict(*args, **kwargs)

    def reset_z(self) -> None:
        self.Z_s.fill_(-1.0)
        self.Z_t.fill_(-1.0)
        self._z_known = False

    @torch.no_grad()
    def normalisers(self, logits: Tensor, n: int, train: bool) -> Tensor:
        """``[Z_s, Z_t]`` for ``logits [2, B, K+1]``, estimating or updating them when due."""
        if self._z_known is None:
            self._z_known = bool(self.Z_s >= 0) and bool(self.Z_t >= 0)
        if not self._z_known:
            z = estimate_z(logits, n)
            if not train:
                return z
            self.Z_s.copy_(z[0])
            self.Z_t.copy_(z[1])
            self._z_known = True
        elif train and self.z_mode == "running":
            z = estimate_z(logits, n)
            m = self.z_momentum
            self.Z_s.mul_(m).add_(z[0], alpha=1.0 - m)
            self.Z_t.mul_(m).add_(z[1], alpha=1.0 - m)
        return torch.stack([self.Z_s, self.Z_t])


# ------------------------------------------------------------------------------ memory bank

class ContrastMemory(_Normalisers):
    """Two ``n × dim`` banks — ``bank_s`` (student embeddings, scores the teacher anchor) and
    ``bank_t`` (teacher embeddings, scores the student anchor) — and the normalisers."""

    def __init__(self, dim: int, T: float, momentum: float, z_mode: str = "fixed", z_momentum: float = 0.99,
                 eps: float = 1e-7):
        super().__init__(z_mode, z_momentum)
        self.dim, self.T, self.momentum, self.eps = int(dim), float(T), float(momentum), float(eps)
        self.register_buffer("bank_s", torch.zeros(0, dim))
        self.register_buffer("bank_t", torch.zeros(0, dim))

    @property
    def n(self) -> int:
        return int(self.bank_s.shape[0])

    def allocate(self, n: int, generator: torch.Generator) -> None:
        device = self.Z_s.device
        self.bank_s = init_rows(n, self.dim, generator, device)  # drawn first, as the reference's memory_v1
        self.bank_t = init_rows(n, self.dim, generator, device)
        self.reset_z()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # a checkpoint restored before setup(): adopt its bank size instead of failing on [0, dim]
        for name in ("bank_s", "bank_t"):
            key = prefix + name
            if key in state_dict and getattr(self, name).shape[0] == 0:
                setattr(self, name, torch.empty_like(state_dict[key], device=self.Z_s.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    # -- scoring -----------------------------------------------------------------------------
    def logits(self, v_s: Tensor, v_t: Tensor, idx: Tensor, impl: str = "dense") -> Tensor:
        """``[2, B, K+1]`` logits ``⟨bank row, anchor⟩/T`` of both directions (differentiable)."""
        if impl == "gather":
            b, k1 = idx.shape
            flat = idx.reshape(-1)
            rows_t = self.bank_t.index_select(0, flat).view(b, k1, -1)
            rows_s = self.bank_s.index_select(0, flat).view(b, k1, -1)
            return torch.stack([crd_logits(v_s, rows_t, self.T), crd_logits(v_t, rows_s, self.T)])
        # every bank row scored in one GEMM per side, then the sampled ones picked (1/T folded into v)
        return torch.stack([torch.gather(matmul_nt(v_s / self.T, self.bank_t), 1, idx),
                            torch.gather(matmul_nt(v_t / self.T, self.bank_s), 1, idx)])

    @torch.no_grad()
    def _dense_logits(self, v_s: Tensor, v_t: Tensor, idx: Tensor) -> Tensor:
        out = torch.empty((2,) + tuple(idx.shape), device=idx.device, dtype=torch.float32)
        torch.gather(matmul_nt(v_s / self.T, self.bank_t), 1, idx, out=out[0])
        torch.gather(matmul_nt(v_t / self.T, self.bank_s), 1, idx, out=out[1])
        return out

    def loss(self, v_s: Tensor, v_t: Tensor, idx: Tensor, impl: str = "dense", train: bool = True) -> Tensor:
        """CRD loss ``NCE(out_s) + NCE(out_t)`` for unit anchors ``v_s, v_t [B, dim]`` and contrast
        indices ``idx [B, K+1]`` (column 0 = positive). Estimates Z when due; never touches the banks."""
        if impl == "gather" or not torch.is_grad_enabled() or not (v_s.requires_grad or v_t.requires_grad):
            logits = self.logits(v_s, v_t, idx, impl)
            return crd_nce_fused(logits, self.normalisers(logits, self.n, train), self.n, self.eps)
        with torch.no_grad():
            logits = self._dense_logits(v_s.detach(), v_t.detach(), idx)
            value, g = nce_terms(logits, self.normalisers(logits, self.n, train), self.n, self.eps)
            grad_s, grad_t = self._dense_grad(g, idx)
        return _PrecomputedGrad.apply(value, v_s, v_t, grad_s, grad_t)

    @torch.no_grad()
    def _dense_grad(self, g: Tensor, idx: Tensor) -> Tuple[Tensor, Tensor]:
        """``∂L/∂v_s, ∂L/∂v_t`` from ``g = ∂L/∂logits [2, B, K+1]``: ``∂L/∂v[b] = Σ_k g[b,k]·row[idx[b,k]]/T``
        as one scatter into ``[2, B, n]`` (repeated indices add up) and one GEMM per side."""
        G = torch.zeros((2, idx.shape[0], self.n), device=idx.device).scatter_add_(2, idx.expand_as(g), g)
        return matmul_nt(G[0], self.bank_t.T).div_(self.T), matmul_nt(G[1], self.bank_s.T).div_(self.T)

    @torch.no_grad()
    def update(self, v_s: Tensor, v_t: Tensor, index: Tensor) -> None:
        """Momentum update with this step's embeddings (already gathered from all ranks)."""
        momentum_update(self.bank_s, index, v_s.detach(), self.momentum)
        momentum_update(self.bank_t, index, v_t.detach(), self.momentum)


# ------------------------------------------------------------------------------ queue

class ContrastQueue(_Normalisers):
    """MoCo-style FIFO of the last ``size`` student / teacher embeddings, for data sets whose
    ``n × dim`` banks would not fit.

    Negatives are the whole queue (``K = size``); the positive is the other network's *current*
    embedding of the same sample (detached, as a bank row would be), since there is no per-sample
    memory. Entries of the anchor's class (when labels are known) and the anchor's own earlier entry
    are masked out of the sum (logit −∞: they contribute ≈ 0 and no gradient). ``Z`` and ``P_n`` use
    ``n = size``. Slots start as random rows (like a fresh bank) with unknown class and index.
    """

    def __init__(self, size: int, dim: int, T: float, z_mode: str = "fixed", z_momentum: float = 0.99,
                 eps: float = 1e-7):
        super().__init__(z_mode, z_momentum)
        self.size, self.dim, self.T, self.eps = int(size), int(dim), float(T), float(eps)
        self.register_buffer("queue_s", torch.zeros(0, dim))
        self.register_buffer("queue_t", torch.zeros(0, dim))
        self.register_buffer("queue_label", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("queue_index", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def allocate(self, generator: torch.Generator) -> None:
        device = self.Z_s.device
        self.queue_s = init_rows(self.size, self.dim, generator, device)
        self.queue_t = init_rows(self.size, self.dim, generator, device)
        self.reset_z()

    def logits(self, v_s: Tensor, v_t: Tensor, label: Optional[Tensor], index: Optional[Tensor]) -> Tensor:
        """``[2, B, size+1]``: column 0 the positive pair, then the queue (masked entries −∞)."""
        pos_s = (v_s * v_t.detach()).sum(1, keepdim=True)
        pos_t = (v_t * v_s.detach()).sum(1, keepdim=True)
        logits = torch.stack([torch.cat([pos_s, v_s @ self.queue_t.T], 1),
                              torch.cat([pos_t, v_t @ self.queue_s.T], 1)]) / self.T
        mask = torch.zeros(v_s.shape[0], self.size, dtype=torch.bool, device=v_s.device)
        if label is not None:
            mask |= self.queue_label.unsqueeze(0) == label.unsqueeze(1)
        if index is not None:
            mask |= self.queue_index.unsqueeze(0) == index.unsqueeze(1)
        mask = torch.cat([torch.zeros_like(mask[:, :1]), mask], 1)
        return logits.masked_fill(mask, float("-inf"))

    def loss(self, v_s: Tensor, v_t: Tensor, label: Optional[Tensor] = None, index: Optional[Tensor] = None,
             train: bool = True) -> Tensor:
        logits = self.logits(v_s, v_t, label, index)
        return crd_nce_fused(logits, self.normalisers(logits, self.size, train), self.size, self.eps)

    @torch.no_grad()
    def update(self, v_s: Tensor, v_t: Tensor, label: Optional[Tensor], index: Optional[Tensor]) -> None:
        """Enqueue (all ranks' embeddings, in rank order), overwriting the oldest entries.

        Out of place: the scores of this step keep the old queue alive for their backward."""
        n = v_s.shape[0]
        if n > self.size:  # more new entries than slots: only the newest fit
            v_s, v_t = v_s[-self.size:], v_t[-self.size:]
            label = label[-self.size:] if label is not None else None
            index = index[-self.size:] if index is not None else None
            n = self.size
        slots = (self.ptr + torch.arange(n, device=v_s.device)) % self.size
        self.queue_s = self.queue_s.index_copy(0, slots, v_s.detach().to(self.queue_s.dtype))
        self.queue_t = self.queue_t.index_copy(0, slots, v_t.detach().to(self.queue_t.dtype))
        self.queue_label.index_fill_(0, slots, -1)
        if label is not None:
            self.queue_label.index_copy_(0, slots, label.long())
        self.queue_index.index_fill_(0, slots, -1)
        if index is not None:
            self.queue_index.index_copy_(0, slots, index.long())
        self.ptr.copy_((self.ptr + n) % self.size)


def check_positive(**values) -> None:
    for name, v in values.items():
        if not v > 0:
            raise ConfigError(f"crd option {name}={v!r} must be > 0")


def check_fraction(**values) -> None:
    for name, v in values.items():
        if not 0.0 <= v < 1.0:
            raise ConfigError(f"crd option {name}={v!r} must be in [0, 1)")


__all__: Sequence[str] = ("IMPLS", "ContrastMemory", "ContrastQueue", "NegativeSampler", "broadcast_state",
                          "crd_nce_fused", "estimate_z", "gather_ranks", "init_rows", "last_occurrence",
                          "matmul_nt", "momentum_update", "nce_terms")
