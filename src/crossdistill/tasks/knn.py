"""The k-NN vote shared by the self-supervised task's monitor and the ``knn`` evaluation protocol
(:mod:`crossdistill.engine.representation`, whose docstring states the rule for ties)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError


def _ranked_top_k(sim: Tensor, k: int) -> Tensor:
    """Indices ``[Q, k]`` of the ``k`` largest entries of each row, ranked by (value desc, index asc)."""
    vals, idx = sim.topk(k, dim=1)
    kth = vals[:, -1:]
    # a value equal to the k-th one left outside the selection: redo such rows with a stable full sort
    ragged = (sim == kth).sum(1) > (vals == kth).sum(1)
    if bool(ragged.any()):
        rows = ragged.nonzero().flatten()
        full = torch.sort(sim[rows], dim=1, descending=True, stable=True).indices[:, :k]
        idx[rows] = full
        vals[rows] = sim[rows].gather(1, full)
    by_index = idx.argsort(dim=1)
    idx, vals = idx.gather(1, by_index), vals.gather(1, by_index)
    by_value = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return idx.gather(1, by_value)


def knn_predict(bank: Tensor, bank_labels: Tensor, queries: Tensor, k: int, num_classes: int,
                exclude_self: bool = False, chunk: int = 1024) -> Tensor:
    """Majority vote of the ``k`` most cosine-similar bank rows for every query (ties: module doc).

    ``exclude_self``: the queries *are* the bank (leave-one-out); a row never votes for itself.
    """
    n = bank.shape[0] - (1 if exclude_self else 0)
    if not 1 <= k <= n:
        raise ConfigError(f"k-NN with k={k} needs at least {k} training samples, but there are {n}; lower k")
    bank = F.normalize(bank.float(), dim=1)
    queries = F.normalize(queries.float(), dim=1)
    bank_labels = bank_labels.long().to(bank.device)
    preds = []
    for start in range(0, queries.shape[0], chunk):
        sim = queries[start:start + chunk] @ bank.t()
        if exclude_self:
            rows = torch.arange(sim.shape[0], device=sim.device)
            sim[rows, rows + start] = float("-inf")
        idx = _ranked_top_k(sim, k)
        votes_for = bank_labels[idx]                                        # [q, k]
        votes = F.one_hot(votes_for, num_classes).sum(1)                   # [q, C]
        rank = torch.arange(k, device=sim.device).expand_as(votes_for)
        first = torch.full_like(votes, k).scatter_reduce(1, votes_for, rank, reduce="amin")
        preds.append((votes * (k + 1) - first).argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
