"""CRD's contrast indices: for one anchor, its positive and ``K`` negatives from the other classes.

As in the reference, the draw is per sample and happens in the data pipeline — CRD declares it as a
per-sample field (``contrast_index``, :meth:`Method.sample_fields`), which the loader's workers
compute from ``(seed, epoch, index)``: the training step never waits for it, and any number of
workers, ranks or a resume give the same draw. A loop that feeds the Distiller without that field
gets it drawn on the spot (:meth:`NegativeSampler.sample`, the same function row by row).

**Without replacement within a row** whenever ``K`` ≤ the number of samples of the other classes
(the reference's ``np.random.choice(..., replace=False)``); only when ``K`` exceeds it (a tiny data
set) are negatives drawn with replacement, as the reference does then too. Each row is a partial
Fisher–Yates shuffle in numpy (``Generator.choice(m, K, replace=False, shuffle=False)``: O(m) set-up
plus K swaps, ≈ 0.15–0.2 ms per row at m = 49 500, K = 16 384 — measured against ``torch.randperm``
(0.27 ms), random keys + ``topk`` (1.1 ms) and ``torch.multinomial`` (3.9 ms); docs/crd.md).

The data set's indices are sorted by class once (``order``; ``start`` / ``count`` per class). Read as
a circle, the samples of the *other* classes are the ``m = n − count_c`` positions right after the
anchor's class block, so ``K`` distinct positions ``r < m`` become ``order[(start_c + count_c + r) mod
n]`` — distinct samples, uniform over the other classes. Without labels, negatives are uniform over
every index but the anchor's own (the same circle around the anchor). ``relax`` takes the positive
uniformly from the anchor's class (possibly itself). Memory ``O(n)``; the object is plain numpy
arrays, so it pickles into loader workers.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError


class NegativeSampler:
    """``sampler(index, rng) -> [K+1]`` long tensor (column 0 = positive): one row of contrast indices."""

    def __init__(self, n: int, k: int, labels: Optional[Tensor] = None, mode: str = "exact"):
        if n < 2:
            raise ConfigError(f"crd needs at least 2 training samples, got num_samples={n}")
        self.n, self.k, self.mode = int(n), int(k), mode
        self.has_labels = labels is not None
        if labels is None:
            if mode == "relax":
                raise ConfigError("crd mode=relax draws a same-class positive and needs the class labels: "
                                  "pass DataSetup(labels=...)")
            self.pool = np.full(1, self.n - 1, dtype=np.int64)  # negatives: every index but the anchor's
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
        self.order = torch.argsort(class_of, stable=True).numpy()
        self.class_of = class_of.numpy()
        self.count = count.numpy()
        self.start = (np.cumsum(self.count) - self.count)
        self.pool = self.n - self.count  # per class: how many samples of other classes there are

    @property
    def with_replacement(self) -> bool:
        """Whether some row must repeat negatives (``K`` > the other-class samples of some class)."""
        return bool(self.k > int(self.pool.min()))

    def __call__(self, index: int, rng: np.random.Generator) -> Tensor:
        """The contrast indices of the sample at ``index``: ``[positive, K negatives]``."""
        index = int(index)
        out = np.empty(self.k + 1, dtype=np.int64)
        if not self.has_labels:
            out[1:] = self._draw(self.n - 1, rng)
            out[1:] += index + 1  # the n − 1 positions after the anchor, on the circle
            out[1:] %= self.n
            out[0] = index
            return torch.from_numpy(out)
        c = self.class_of[index]
        start, count = int(self.start[c]), int(self.count[c])
        pos = self._draw(self.n - count, rng)
        pos += start + count  # the positions after the anchor's class block, on the circle
        pos[pos >= self.n] -= self.n
        out[1:] = self.order[pos]
        out[0] = index if self.mode == "exact" else self.order[start + int(rng.integers(count))]
        return torch.from_numpy(out)

    def _draw(self, m: int, rng: np.random.Generator) -> np.ndarray:
        """``K`` distinct integers in ``[0, m)`` (with replacement only when ``K > m``)."""
        if self.k <= m:
            return rng.choice(m, self.k, replace=False, shuffle=False).astype(np.int64, copy=False)
        return rng.integers(0, m, self.k, dtype=np.int64)

    def sample(self, index: Tensor, rng: Optional[np.random.Generator] = None) -> Tensor:
        """``[B, K+1]`` for a batch of dataset indices, row by row (``rng``: by default seeded from the
        torch RNG), on ``index``'s device — what the data pipeline would have added."""
        if rng is None:
            rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, ())))
        index = torch.as_tensor(index).flatten()
        rows = [self(int(i), rng) for i in index.tolist()]
        return torch.stack(rows).to(index.device)
