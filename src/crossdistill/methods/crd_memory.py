"""CRD's state: the two memory banks (or a queue) and the normalisers ``Z``, and how they evolve.

The loss arithmetic lives in :mod:`crossdistill.losses.contrastive`; this module holds the buffers,
decides when ``Z`` is estimated, picks the scoring implementation and updates the banks. Under DDP
``Z`` is estimated from every rank's logits (:func:`~crossdistill.engine.distributed.all_gather_cat`),
so it is identical on every rank.

Two scoring implementations give the same numbers (see ``docs/crd.md``):

- ``"gather"`` — the reference: copy the ``[B, K+1, D]`` bank rows, ``bmm`` with the anchors, and
  let autograd differentiate. At the defaults that is 1M rows = 512 MiB per bank per step, written
  and read back twice (forward and backward): memory-bound.
- ``"dense"`` — score *every* bank row with one GEMM and pick the sampled entries
  (:func:`~crossdistill.losses.crd_dense_logits`); the loss and its gradient w.r.t. the logits in
  closed form (:func:`~crossdistill.losses.crd_nce_terms`); the gradient w.r.t. the anchors with a
  scatter and a second GEMM (:func:`~crossdistill.losses.crd_dense_grad`), handed to autograd
  precomputed (:func:`~crossdistill.losses.with_gradient`) — so nothing holds on to the bank, and the
  momentum update may overwrite it in place straight away.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..engine.distributed import all_gather_cat
from ..losses import (
    crd_dense_grad,
    crd_dense_logits,
    crd_estimate_z,
    crd_log_z_stats,
    crd_logits,
    crd_nce_fused,
    crd_nce_terms,
    with_gradient,
)

IMPLS = ("dense", "gather")


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


@torch.no_grad()
def estimate_z(logits: Tensor, n: int) -> Tensor:
    """``mean(exp(logits)) · n`` per side of ``logits [S, B, K+1]`` over every rank → ``[S]`` (float32)."""
    (stats,) = all_gather_cat(crd_log_z_stats(logits).unsqueeze(0))  # [ranks, S, 2]
    return crd_estimate_z(stats, n)


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

    def logits(self, v_s: Tensor, v_t: Tensor, idx: Tensor) -> Tensor:
        """``[2, B, K+1]`` logits ``⟨bank row, anchor⟩/T`` of both directions by the reference's row
        gather (differentiable w.r.t. the anchors)."""
        b, k1 = idx.shape
        flat = idx.reshape(-1)
        rows_t = self.bank_t.index_select(0, flat).view(b, k1, -1)
        rows_s = self.bank_s.index_select(0, flat).view(b, k1, -1)
        return torch.stack([crd_logits(v_s, rows_t, self.T), crd_logits(v_t, rows_s, self.T)])

    def loss(self, v_s: Tensor, v_t: Tensor, idx: Tensor, impl: str = "dense", train: bool = True) -> Tensor:
        """CRD loss ``NCE(out_s) + NCE(out_t)`` for unit anchors ``v_s, v_t [B, dim]`` and contrast
        indices ``idx [B, K+1]`` (column 0 = positive). Estimates Z when due; never touches the banks."""
        banks = (self.bank_t, self.bank_s)  # side 0: the student anchor against teacher embeddings
        if impl == "gather":
            logits = self.logits(v_s, v_t, idx)
            return crd_nce_fused(logits, self.normalisers(logits, self.n, train), self.n, self.eps)
        logits = crd_dense_logits((v_s.detach(), v_t.detach()), banks, idx, self.T)
        Z = self.normalisers(logits, self.n, train)
        if not torch.is_grad_enabled() or not (v_s.requires_grad or v_t.requires_grad):
            return crd_nce_terms(logits, Z, self.n, self.eps, need_grad=False)[0]
        with torch.no_grad():
            value, g = crd_nce_terms(logits, Z, self.n, self.eps)
            grad_s, grad_t = crd_dense_grad(g, idx, banks, self.T)
        return with_gradient(value, (v_s, v_t), (grad_s, grad_t))

    @torch.no_grad()
    def update(self, v_s: Tensor, v_t: Tensor, index: Tensor) -> None:
        """Momentum update with this step's embeddings (already gathered from all ranks)."""
        momentum_update(self.bank_s, index, v_s.detach(), self.momentum)
        momentum_update(self.bank_t, index, v_t.detach(), self.momentum)


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
