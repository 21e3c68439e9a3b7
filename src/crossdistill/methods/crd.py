"""CRD — Tian et al. 2020: contrastive representation distillation with memory banks of embeddings.

Each network's pooled feature goes through its own embedding head (Linear(d→128) + L2 norm); the
student's embedding is scored against ``K`` teacher-bank rows and the teacher's against ``K``
student-bank rows (one positive, ``K`` negatives from other classes), and an NCE loss asks the
positive to stand out. The reference's semantics by default; see ``docs/crd.md``.

Where the pieces are: the loss arithmetic in :mod:`crossdistill.losses.contrastive`, the banks /
queue and ``Z`` in :mod:`.crd_memory`, the contrast indices in :mod:`.crd_sampler`. The trainer
gives nothing special to CRD: :meth:`setup` gives the data set's size and labels, the batch's
``"index"`` field says which bank rows belong to the batch, and the contrast indices arrive as the
per-sample field ``contrast_index`` (drawn in the loader's workers, as the reference draws them in
``__getitem__``). Under DDP every rank's embeddings and indices are gathered before the bank update,
so the banks (and ``Z``) stay identical on every rank.

Options beyond the reference (defaults keep it):

- ``projector="inverted"``: no student head — the student's L2-normalised pooled feature is its
  embedding, and the teacher's head maps teacher → student space (``dim = d_student``; ``feat_dim``
  is then unused). As in Learning to Project, only the teacher side is transformed.
- ``memory="queue"``: a FIFO of the last ``queue_size`` embeddings instead of ``n × dim`` banks.
- ``z_mode="running"``: an EMA of ``Z`` (momentum ``z_momentum``) instead of the first-batch value.
- ``impl``: ``"dense"`` (fast, same numbers) or ``"gather"`` (the reference's row gather).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Annotated, Dict, List, Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ..engine.distributed import all_gather_cat, broadcast_buffers
from ..errors import ConfigError, ShapeError
from ..projectors import pool_to_vector
from .base import DataSetup, Method, Positive, PositiveInt, SampleField, register_method
from .crd_memory import ContrastMemory, ContrastQueue
from .crd_sampler import NegativeSampler

SETUP_MESSAGE = ("crd needs the dataset size: the trainer calls setup(); in your own loop call "
                 "distiller.setup(DataSetup(num_samples=len(ds), labels=...))")
#: the per-sample field that carries a sample's ``[K+1]`` contrast indices
CONTRAST_INDEX = "contrast_index"
Momentum = Annotated[float, Field(ge=0, lt=1)]


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
    paper = "Tian, Krishnan & Isola, ICLR 2020 — Contrastive Representation Distillation"
    year = 2020
    kind = "contrastive"
    zoo = True
    default_weight = 0.8  # RepDistiller: γ=1 (task_weight), α=0, β=0.8
    default_student = "@pooled"
    default_teacher = "@pooled"

    def __init__(self, feat_dim: PositiveInt = 128, nce_k: PositiveInt = 16384, nce_t: Positive = 0.07,
                 nce_m: Momentum = 0.5, mode: Literal["exact", "relax"] = "exact",
                 projector: Literal["standard", "inverted"] = "standard",
                 memory: Literal["bank", "queue"] = "bank", queue_size: PositiveInt = 16384,
                 z_mode: Literal["fixed", "running"] = "fixed", z_momentum: Momentum = 0.99,
                 impl: Literal["dense", "gather"] = "dense", **sides):
        super().__init__(**sides)
        self.feat_dim, self.nce_k, self.nce_t, self.nce_m = feat_dim, nce_k, nce_t, nce_m
        self.mode, self.projector_direction, self.memory_kind = mode, projector, memory
        self.queue_size, self.z_mode, self.z_momentum, self.impl = queue_size, z_mode, z_momentum, impl
        self.sampler: Optional[NegativeSampler] = None
        self.class_of: Optional[Tensor] = None  # class of every training sample (queue masking)
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
        if data.labels is not None:
            self.class_of = torch.unique(torch.as_tensor(data.labels).long().flatten().cpu(), return_inverse=True)[1]
        if self.memory_kind == "bank":
            self.sampler = NegativeSampler(data.num_samples, self.nce_k, data.labels, self.mode)
            if self.sampler.with_replacement:
                warnings.warn(f"crd: nce_k={self.nce_k} exceeds the other-class samples of some class "
                              f"(fewest: {int(self.sampler.pool.min())}); those rows draw negatives with "
                              "replacement, as the reference does", stacklevel=2)
        elif self.mode == "relax":
            raise ConfigError("crd mode=relax needs memory=bank (a queue has no per-sample positive to relax)")
        self._allocate()

    def _allocate(self) -> None:
        if self.memory_kind != "bank" or self._data is None or self._seed is None:
            return
        if self.memory.n != self._data.num_samples:
            self.memory.allocate(self._data.num_samples, self._generator())

    def sample_fields(self) -> Dict[str, SampleField]:
        return {CONTRAST_INDEX: self.sampler} if self.sampler is not None else {}

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
            broadcast_buffers(self.memory)
            self._synced = True

    def forward(self, s, t, batch):
        if not hasattr(self, "memory"):
            raise RuntimeError("crd is not built: the Distiller builds it from one dry run (example_input=...)")
        if self.memory_kind == "queue":
            with _float32(s[0]):
                return self._queue_forward(*self.embed(s[0], t[0]), batch)
        if self._data is None or self.memory.n == 0:
            raise ConfigError(SETUP_MESSAGE)
        b = s[0].shape[0]
        index = self._index(batch, b, required=True)
        contrast_idx = batch.get(CONTRAST_INDEX)
        if contrast_idx is None:
            raise ConfigError(f"crd needs batch['{CONTRAST_INDEX}'], its per-sample field: the Distiller adds it "
                              "(from the data pipeline, or drawn on the spot); called on its own, pass "
                              "term.sampler.sample(batch['index'])")
        contrast_idx = torch.as_tensor(contrast_idx).to(index.device).long()
        if tuple(contrast_idx.shape) != (b, self.nce_k + 1):
            raise ShapeError(f"crd: batch['{CONTRAST_INDEX}'] is {tuple(contrast_idx.shape)}, expected "
                             f"[{b}, nce_k + 1 = {self.nce_k + 1}]")
        self._sync_once()
        return self.contrast_loss(s[0], t[0], index, contrast_idx)

    def contrast_loss(self, f_s: Tensor, f_t: Tensor, index: Tensor, contrast_idx: Tensor) -> Tensor:
        """The bank-mode step for given contrast indices ``[B, K+1]``: embed, loss, momentum update."""
        with _float32(f_s):
            v_s, v_t = self.embed(f_s, f_t)
            loss = self.memory.loss(v_s, v_t, contrast_idx, self.impl, train=self.training)
            if self.training:
                v_s_all, v_t_all, index_all = all_gather_cat(v_s.detach(), v_t.detach(), index)
                self.memory.update(v_s_all, v_t_all, index_all)
        return loss

    def _queue_forward(self, v_s: Tensor, v_t: Tensor, batch: Dict[str, Tensor]) -> Tensor:
        b = v_s.shape[0]
        index = self._index(batch, b, required=False)
        label = None
        if self.class_of is not None and index is not None:
            label = self.class_of.to(index.device)[index]
        elif self._data is not None and self._data.task == "classification" and isinstance(batch.get("target"), Tensor):
            label = batch["target"].to(v_s.device).long().flatten()  # the task's target: class indices
        self._sync_once()
        loss = self.memory.loss(v_s, v_t, label, index, train=self.training)
        if self.training:
            extra = [x for x in (label, index) if x is not None]
            gathered = all_gather_cat(v_s.detach(), v_t.detach(), *extra)
            g_label = gathered[2] if label is not None else None
            g_index = gathered[-1] if index is not None else None
            self.memory.update(gathered[0], gathered[1], g_label, g_index)
        return loss

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, nce_k={self.nce_k}, nce_t={self.nce_t}, nce_m={self.nce_m}, mode={self.mode}, "
                f"projector={self.projector_direction}, memory={self.memory_kind}, z_mode={self.z_mode}, impl={self.impl}")
