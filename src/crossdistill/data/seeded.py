"""Augmentation whose randomness is a pure function of (seed, epoch, index).

Every sample draws from its own RNG seeded by ``(seed, epoch, index)``, never from a shared
stream. So the augmented batch at any step is the same whatever the number of workers, the
rank, or whether the run was resumed mid-epoch — the basis of bit-identical crash-resume.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import Tensor
from torch.utils.data import Dataset

_MIX = (1_000_003, 7_919, 104_729)


class AugmentedDataset(Dataset):
    def __init__(self, dataset: Dataset, transform: Optional[Callable[[Dict[str, Tensor]], Dict[str, Tensor]]], seed: int = 0):
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.info = getattr(dataset, "info", None)
        self.labels = getattr(dataset, "labels", None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        sample = self.dataset[index]
        if self.transform is None:
            return sample
        seed = (self.seed * _MIX[0] + self.epoch * _MIX[1] + int(index) * _MIX[2]) % (2**63 - 1)
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone: torch.manual_seed would also queue a lazy CUDA seeding that
            # records a stack trace per call (most of a small model's step time on CPU), and
            # fork_rng(devices=[]) would not restore the CUDA state it changed
            torch.default_generator.manual_seed(seed)
            return self.transform(sample)
