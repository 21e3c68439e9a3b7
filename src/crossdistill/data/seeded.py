"""Augmentation whose randomness is a pure function of (seed, epoch, index).

Every sample draws from its own RNG seeded by ``(seed, epoch, index)``, never from a shared
stream. So the augmented batch at any step is the same whatever the number of workers, the
rank, or whether the run was resumed mid-epoch — the basis of bit-identical crash-resume.

``copies > 1`` adds independently augmented copies of the image, ``input_1``, ``input_2``, ...
(two views for a self-supervised objective, or a different view for one network). Copy ``c``
draws from an RNG seeded by ``(seed, epoch, index, c)``; copy 0 is ``input`` with the same seed
as without copies, so adding copies changes nothing else. Only the image is kept from a copy:
the targets (``label``, ``mask``, ...) belong to ``input``.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import Tensor
from torch.utils.data import Dataset

_MIX = (1_000_003, 7_919, 104_729, 15_485_863)


def copy_field(c: int) -> str:
    """The batch field of augmented copy ``c``: ``input`` for 0, else ``input_c``."""
    return "input" if c == 0 else f"input_{c}"


class AugmentedDataset(Dataset):
    def __init__(self, dataset: Dataset, transform: Optional[Callable[[Dict[str, Tensor]], Dict[str, Tensor]]], seed: int = 0,
                 copies: int = 1):
        if int(copies) < 1:
            raise ValueError(f"copies must be >= 1, got {copies}")
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.copies = int(copies)
        self.epoch = 0
        self.info = getattr(dataset, "info", None)
        self.labels = getattr(dataset, "labels", None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        sample = self.dataset[index]
        out = self._augment(sample, index, 0)
        for c in range(1, self.copies):
            out[copy_field(c)] = self._augment(sample, index, c)["input"]
        return out

    def _augment(self, sample: Dict[str, Tensor], index: int, copy: int) -> Dict[str, Tensor]:
        if self.transform is None:
            return dict(sample) if copy == 0 else {"input": sample["input"].clone()}
        seed = (self.seed * _MIX[0] + self.epoch * _MIX[1] + int(index) * _MIX[2] + copy * _MIX[3]) % (2**63 - 1)
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also queue a seed for every lazy
            # accelerator backend, formatting a stack trace each time (~1 ms per sample on CPU)
            torch.default_generator.manual_seed(seed)
            return self.transform(sample)
