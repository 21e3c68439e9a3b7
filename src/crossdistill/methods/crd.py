"""CRD — Tian et al. 2020: contrastive representation distillation with memory banks of embeddings.

Each network's pooled feature goes through its own embedding head (Linear(d→128) + L2 norm); the
student's embedding is scored against ``K`` teacher-bank rows and the teacher's against ``K``
student-bank rows (one positive, ``K`` negatives from other classes), and an NCE loss asks the
positive to stand out. Reference semantics (REFERENCE.md §2) by default; see ``docs/crd.md``.

Options beyond the reference (defaults keep it):

- ``projector="inverted"``: no student head — the student's L2-normalised pooled feature is its
  embedding, and the teacher's head maps teacher → student space (``dim = d_student``; ``feat_dim``
  is then unused). As in Learning to Project, only the teacher side is transformed.
- ``memory="queue"``: a FIFO of the last ``queue_size`` embeddings instead of ``n × dim`` banks.
- ``z_mode="running"``: an EMA of ``Z`` (momentum ``z_momentum``) instead of the first-batch value.
- ``impl``: ``"dense"`` (fast, same numbers) or ``"gather"`` (the reference's row gather).

The trainer gives nothing special to CRD: the batch's ``"index"`` field (added by
``IndexedDataset``) says which bank rows belong to the batch, and :meth:`setup` gives the data
set's size and labels. Under DDP every rank's embeddings and indices are gathered before the bank
update, so the banks (and ``Z``) stay identical on every rank.
"""
from __future__ import annotations

import contextlib
from typing import Dict, List, Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, ShapeError
from ..losses import kd_loss
from ..projectors import pool_to_vector
from ._crd_memory import (
    ContrastMemory,
    ContrastQueue,
    NegativeSampler,
    broadcast_state,
    check_fraction,
    check_positive,
    gather_ranks,
)
from .base import DataSetup, Method, register_method

SETUP_MESSAGE = ("crd needs the dataset size: the trainer calls setup(); in your own loop call "
                 "distiller.setup(DataSetup(num_samples=len(ds), labels=...))")


def _float32(x: Tensor):
    """Autocast off: banks, scores and Z stay in float32 (also when called outside the Distiller)."""
    dev = x.device.type
    return torch.autocast(dev, enabled=False) if torch.is_autocast_enabled(dev) else contextlib.nullcontext()


class EmbedHead(nn.Module):
    """``Linear(d_in → d_out)`` then L2 normalisation; ``d_out=None``: normalisation only."""

    def __init__(self, d_in: int, d_out: Optional[int]):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out) if d_out is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(pool_to_vector(x)), dim=1)


@register_method("crd")
class CRD(Method):
    default_weight = 0.8  # RepDistiller: γ=1 (task_weight), α=0, β=0.8
    default_student = "@pooled"
    default_teacher = "@pooled"

    def __init__(self, feat_dim: int = 128, nce_k: int = 16384, nce_t: float = 0.07, nce_m: float = 0.5,
                 mode: Literal["exact", "relax"] = "exact",
                 projector: Literal["standard", "inverted"] = "standard",
                 memory: Literal["bank", "queue"] = "bank", queue_size: int = 16384,
                 z_mode: Literal["fixed", "running"] = "fixed", z_momentum: float = 0.99,
                 impl: Literal["dense", "gather"] = "dense", **sides):
        super().__init__(**sides)
        check_positive(feat_dim=feat_dim, nce_k=nce_k, nce_t=nce_t, queue_size=queue_size)
        check_fraction(nce_m=nce_m, z_momentum=z_momentum)
        self.feat_dim, self.nce_k, self.nce_t, self.nce_m = int(feat_dim), int(nce_k), float(nce_t), float(nce_m)
        self.mode, self.projector_direction, self.memory_kind = mode, projector, memory
        self.queue_size, self.z_mode, self.z_momentum, self.impl = int(queue_size), z_mode, float(z_momentum), impl
        self.sampler = NegativeSampler()
        self._data: Optional[DataSetup] = None
        self._seed: Optional[int] = None
        self._synced = False

    # -- wiring -------------------------------------------------------------------------------
    def build(self, s: List[Tensor], t: List[Tensor]) -> None:
        d_s, d_t = pool_to_vector(s[0]).shape[1], pool_to_vector(t[0]).shape[1]
        if self.projector_direction == "standard":
            self.embed_s, self.embed_t, dim = EmbedHead(d_s, self.feat_dim), EmbedHead(d_t, self.feat_dim), self.feat_dim
        else:  # inverted: the teacher's head maps into the student's (normalised) feature space
            self.embed_s, self.embed_t, dim = EmbedHead(d_s, None), EmbedHead(d_t, d_s), d_s
        if self.memory_kind == "bank":
            self.memory = ContrastMemory(dim, self.nce_t, self.nce_m, self.z_mode, self.z_momentum)
        else:
            self.memory = ContrastQueue(self.queue_size, dim, self.nce_t, self.z_mode, self.z_momentum)
        # the initial rows are fixed by the torch RNG now (the build runs under the run's seed), and
        # drawn when the data set's size is known
        self._seed = int(torch.randint(0, 2 ** 62, ()).item())
        if self.memory_kind == "queue":
            self.memory.allocate(self._generator())
        self._allocate()

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self._seed)

    def setup(self, data: DataSetup) -> None:
        self._data = data
        device = self.memory.Z_s.device if hasattr(self, "memory") else None
        self.sampler.set_data(data.num_samples, data.labels, device)
        if self.mode == "relax" and not self.sampler.has_labels:
            raise ConfigError("crd mode=relax draws a same-class positive and needs the class labels: "
                              "pass DataSetup(labels=...)")
        self._allocate()

    def _allocate(self) -> None:
        if self.memory_kind != "bank" or self._data is None or self._seed is None:
            return
        if self.memory.n != self._data.num_samples:
            self.memory.allocate(self._data.num_samples, self._generator())

    # -- the loss -----------------------------------------------------------------------------
    def embed(self, f_s: Tensor, f_t: Tensor):
        return self.embed_s(f_s.float()), self.embed_t(f_t.float())

    def _index(self, batch: Dict[str, Tensor], b: int, required: bool) -> Optional[Tensor]:
        index = batch.get("index")
        if index is None:
            if required:
                raise ConfigError("crd needs batch['index'], the dataset position of every sample: wrap the "
                                  "training set in crossdistill.data.IndexedDataset (the trainer does)")
            return None
        index = torch.as_tensor(index).to(self.memory.Z_s.device).long().flatten()
        if index.numel() != b:
            raise ShapeError(f"crd: batch['index'] has {index.numel()} entries for a batch of {b}")
        return index

    def _sync_once(self) -> None:
        # identical starting state on every rank, however each rank was seeded (once, at the first step)
        if not self._synced and self.training:
            broadcast_state(self.memory)
            self._synced = True

    def forward(self, s, t, batch):
        if not hasattr(self, "memory"):
            raise RuntimeError("crd is not built: the Distiller builds it from one dry run (example_input=...)")
        if self.memory_kind == "queue":
            with _float32(s[0]):
                return self._queue_forward(*self.embed(s[0], t[0]), batch)
        if self._data is None or self.memory.n == 0:
            raise ConfigError(SETUP_MESSAGE)
        index = self._index(batch, s[0].shape[0], required=True)
        self._sync_once()
        contrast_idx = self.sampler.sample(index, self.nce_k, self.mode)
        return self.contrast_loss(s[0], t[0], index, contrast_idx)

    def contrast_loss(self, f_s: Tensor, f_t: Tensor, index: Tensor, contrast_idx: Tensor) -> Tensor:
        """The bank-mode step for given contrast indices ``[B, K+1]``: embed, loss, momentum update."""
        with _float32(f_s):
            v_s, v_t = self.embed(f_s, f_t)
            loss = self.memory.loss(v_s, v_t, contrast_idx, self.impl, train=self.training)
            if self.training:
                v_s_all, v_t_all, index_all = gather_ranks(v_s.detach(), v_t.detach(), index)
                self.memory.update(v_s_all, v_t_all, index_all)
        return loss

    def _queue_forward(self, v_s: Tensor, v_t: Tensor, batch: Dict[str, Tensor]) -> Tensor:
        b = v_s.shape[0]
        index = self._index(batch, b, required=False)
        label = None
        if self.sampler.has_labels and index is not None:
            label = self.sampler.class_of[index]
        elif isinstance(batch.get("label"), Tensor) and batch["label"].dim() == 1 and batch["label"].shape[0] == b \
                and not batch["label"].is_floating_point():
            label = batch["label"].to(v_s.device).long()
        self._sync_once()
        loss = self.memory.loss(v_s, v_t, label, index, train=self.training)
        if self.training:
            extra = [x for x in (label, index) if x is not None]
            gathered = gather_ranks(v_s.detach(), v_t.detach(), *extra)
            g_label = gathered[2] if label is not None else None
            g_index = gathered[-1] if index is not None else None
            self.memory.update(gathered[0], gathered[1], g_label, g_index)
        return loss

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, nce_k={self.nce_k}, nce_t={self.nce_t}, nce_m={self.nce_m}, mode={self.mode}, "
                f"projector={self.projector_direction}, memory={self.memory_kind}, z_mode={self.z_mode}, impl={self.impl}")


@register_method("crd_kd")
class CRDKD(CRD):
    """CRD + KD in one term (REFERENCE.md §2: ``γ·CE + α·KD + β·CRD`` with γ=1, α=1, β=0.8, T=4).

    Reads the pooled feature *and* the logits of each network; the term's loss is
    ``crd_weight·CRD + kd_weight·KD`` with weight 1 (``crd`` and ``kd`` are logged apart). The same
    recipe can instead list two terms: ``{method: kd, weight: 1.0}`` and ``{method: crd}``.
    """

    default_weight = 1.0
    default_student = ("@pooled", "output")
    default_teacher = ("@pooled", "output")

    def __init__(self, crd_weight: float = 0.8, kd_weight: float = 1.0, T: float = 4.0, **options):
        super().__init__(**options)
        self.crd_weight, self.kd_weight, self.T = float(crd_weight), float(kd_weight), float(T)

    def build(self, s, t):
        if len(s) != 2 or len(t) != 2:
            raise ConfigError("crd_kd reads two sides per network, [pooled feature, logits]; "
                              f"got {len(s)} student and {len(t)} teacher tensors")
        super().build(s[:1], t[:1])

    def forward(self, s, t, batch):
        crd = super().forward(s[:1], t[:1], batch)
        kd = kd_loss(s[1], t[1], self.T)
        return {"loss": self.crd_weight * crd + self.kd_weight * kd, "crd": crd, "kd": kd}
