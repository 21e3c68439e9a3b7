"""Augmentation and per-sample fields whose randomness is a pure function of (seed, epoch, index).

Every sample draws from its own RNG seeded by ``(seed, epoch, index)``, never from a shared
stream. So the augmented batch at any step is the same whatever the number of workers, the
rank, or whether the run was resumed mid-epoch — the basis of bit-identical crash-resume.

With ``views=V`` (the teacher cache, ``crossdistill.teacher_cache``) a sample has V fixed augmented
views instead of a fresh one per epoch: view ``v`` of sample ``i`` is the transform run under an RNG
seeded by ``(view_seed, i, v)`` — its crop box, flip, … are a pure function of those three integers,
so it can be replayed at any time without storing parameters — and each epoch picks one view per
sample from ``(seed, epoch, i)``. The sample then carries its ``"view"``.

``copies > 1`` adds independently augmented copies of the image, ``input_1``, ``input_2``, ...
(two views for a self-supervised objective, or a different view for one network). Copy ``c``
draws from an RNG seeded by the sample's seed plus ``c`` times a constant; copy 0 is ``input``
with the same seed as without copies, so adding copies changes nothing else. Only the image is kept from a copy:
the targets (``label``, ``mask``, ...) belong to ``input``.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Dict, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

_MIX = (1_000_003, 7_919, 104_729, 15_485_863)
_VIEW_SALT = 0x5EED_0F_7E1E


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def copy_field(c: int) -> str:
    """The batch field of augmented copy ``c``: ``input`` for 0, else ``input_c``."""
    return "input" if c == 0 else f"input_{c}"


class _EpochSeeded(Dataset):
    """A wrapper whose samples depend on ``(seed, epoch, index)``; the trainer's ``set_epoch`` reaches it."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0
        self.info = getattr(dataset, "info", None)
        self.labels = getattr(dataset, "labels", None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)


class AugmentedDataset(_EpochSeeded):
    def __init__(self, dataset: Dataset, transform: Optional[Callable[[Dict[str, Tensor]], Dict[str, Tensor]]], seed: int = 0,
                 views: Optional[int] = None, view_seed: int = 0, copies: int = 1):
        if int(copies) < 1:
            raise ValueError(f"copies must be >= 1, got {copies}")
        super().__init__(dataset, seed)
        self.transform = transform
        self.copies = int(copies)
        self.views = views
        self.view_seed = view_seed

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        if self.views is not None:
            v = self.view_of(index)
            sample = dict(self.view(index, v))
            sample["view"] = torch.tensor(v, dtype=torch.long)
            return sample
        return self._transformed(index, (self.seed * _MIX[0] + self.epoch * _MIX[1] + int(index) * _MIX[2]) % (2**63 - 1))

    def view_of(self, index: int) -> int:
        """The view sample ``index`` shows in the current epoch: drawn from ``(seed, epoch, index)``."""
        key = (self.seed * _MIX[0] + self.epoch * _MIX[1] + int(index) * _MIX[2] + _VIEW_SALT) % 2**64
        return _splitmix64(key) % int(self.views or 1)

    def view(self, index: int, view: int) -> Dict[str, Tensor]:
        """View ``view`` of sample ``index``: the same tensors every time (any epoch, worker or rank)."""
        key = (self.view_seed * _MIX[0] + (int(view) + 1) * _MIX[1] * _MIX[2] + int(index) * _MIX[2]) % 2**64
        return self._transformed(index, _splitmix64(key ^ _VIEW_SALT) % (2**63 - 1))

    def _transformed(self, index: int, seed: int) -> Dict[str, Tensor]:
        """Sample ``index`` augmented under ``seed``; its extra copies under ``seed + c·M``."""
        sample = self.dataset[index]
        out = self._augment(sample, seed, first=True)
        for c in range(1, self.copies):
            out[copy_field(c)] = self._augment(sample, (seed + c * _MIX[3]) % (2**63 - 1), first=False, copy=c)["input"]
        return out

    def _augment(self, sample: Dict[str, Tensor], seed: int, first: bool, copy: int = 0) -> Dict[str, Tensor]:
        # a list of transforms: one per copy (data.copy_augment, e.g. MLKD's weak and strong views)
        transform = self.transform[copy] if isinstance(self.transform, (list, tuple)) else self.transform
        if transform is None:
            return dict(sample) if first else {"input": sample["input"].clone()}
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone: torch.manual_seed would also queue a lazy CUDA seeding that
            # records a stack trace per call (most of a small model's step time on CPU), and
            # fork_rng(devices=[]) would not restore the CUDA state it changed
            torch.default_generator.manual_seed(seed)
            return transform(sample)

class SampleFieldsDataset(_EpochSeeded):
    """Adds per-sample fields that methods declare (``Method.sample_fields``) to every sample.

    ``fields`` maps a batch key to ``fn(index, rng) -> Tensor``; ``rng`` is a
    ``numpy.random.Generator`` seeded from ``(seed, epoch, index, key)``, so a field is a pure function
    of those — the same whatever the number of workers, the rank, or whether the run was resumed. The
    work happens in ``__getitem__``, i.e. in the loader's worker processes, off the training step
    (CRD's negatives, as in the reference). The trainer's ``set_epoch`` reaches it like the
    augmentation's.
    """

    def __init__(self, dataset: Dataset, fields: Dict[str, Callable[[int, "np.random.Generator"], Tensor]],
                 seed: int = 0):
        super().__init__(dataset, seed)
        self.fields = dict(fields)
        # a stable number per key (Python's str hash is salted per process: workers would disagree)
        self._keys = {k: int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") for k in self.fields}

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        sample = dict(self.dataset[index])
        for key, fn in self.fields.items():
            rng = np.random.default_rng([self.seed & 0xFFFFFFFFFFFFFFFF, self.epoch, int(index), self._keys[key]])
            sample[key] = torch.as_tensor(fn(int(index), rng))
        return sample
