"""Data order: a pure function of (seed, epoch, rank), for exact resume and DDP sharding."""
from __future__ import annotations

import math
from typing import Iterator, List

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Shuffled order from (seed, epoch), sharded by rank, able to start mid-epoch.

    Each rank takes every ``world``-th index of the same permutation, padded to equal length (every
    rank must run the same number of steps). So step k of a W-process run with batch B sees the
    same samples as step k of a 1-process run with batch W·B: the global batch does not depend on
    the number of processes.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1):
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self) -> List[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per_rank = math.ceil(self.n / self.world)
        order += order[: per_rank * self.world - self.n]
        return order[self.rank::self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start:])

    def __len__(self) -> int:
        return max(math.ceil(self.n / self.world) - self.start, 0)


class ShardSampler(Sampler[int]):
    """Evaluation order: rank r takes samples r, r + W, r + 2W, … — every sample exactly once over
    the ranks, no padding (the ranks' metric states are summed, so unequal shards are fine)."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def set_data_epoch(ds, epoch: int) -> None:
    """Tell every wrapper of a dataset that has ``set_epoch`` (seeded augmentation) the epoch."""
    while ds is not None:
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)
        ds = getattr(ds, "dataset", None)
