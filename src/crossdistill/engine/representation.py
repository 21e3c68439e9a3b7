"""Representation evaluation: k-NN and linear probe on the frozen backbone's features.

The usual protocols of self-supervised learning and of SimReg (Navaneet et al. 2021), for any model of the
registry on any classification data set, teachers and students alike:

- **features** — the frozen network in eval mode, no augmentation (the eval transform: the centre
  view), the output of one side (default ``@pooled``, the pooled penultimate vector; a feature map
  is average-pooled), float32. They are computed **once** per split and kept in memory
  (:class:`Features`), so both protocols cost seconds, not epochs of backbone forwards.
- **k-NN** (:func:`knn_eval`) — L2-normalised features, cosine similarity, for each test sample
  the ``k`` most similar training samples, a majority vote. Rule for ties, so the answer never
  depends on the hardware or the library's sort: neighbours are ranked by similarity, equal
  similarities by the lower training index; among the classes with the most votes, the one met
  first in that ranking wins (the class of the best-ranked neighbour among the tied classes).
  ``k = 1`` is therefore the nearest neighbour's class.
- **linear probe** (:func:`linear_probe`) — features L2-normalised, then standardised with the
  training split's per-dimension mean and std; a linear softmax classifier trained with SGD
  (momentum 0.9, batch 256) and a step schedule (learning rate × 0.1 at 60 % and 80 % of the
  epochs), zero-initialised and shuffled by its own seeded generator: deterministic.

``crossdistill eval CHECKPOINT --protocol knn|linear`` runs :func:`evaluate_representation`, which
writes ``eval.json`` next to the checkpoint (atomically, merged with what is already there).
"""
from __future__ import annotations

import inspect
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, DataError
from ..projectors import pool_to_vector

PROTOCOLS = ("knn", "linear")
EVAL_FILE = "eval.json"


@dataclass
class Features:
    """Frozen features of a training and a test split, with their labels (kept in memory)."""

    train: Tensor          # [N, D] float32
    train_labels: Tensor   # [N] long
    test: Tensor           # [M, D]
    test_labels: Tensor    # [M]
    num_classes: int


# ----------------------------------------------------------------------------------- features
@torch.no_grad()
def extract(model: nn.Module, dataset: Dataset, feature: str = "@pooled",
            view: Optional[Callable[[Tensor], Tensor]] = None, batch_size: int = 256,
            device: Optional[torch.device] = None) -> Tuple[Tensor, Optional[Tensor]]:
    """``(features [N, D], labels [N] or None)`` of ``dataset`` through the frozen ``model``."""
    from ..taps import FeatureTap

    path = resolve_feature(model, feature)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    tap = FeatureTap(model, [path], "model") if path != "output" else None
    feats, labels = [], []
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            x = batch["input"].to(device)
            out = model(view(x) if view is not None else x)
            z = tap.pop()[path] if tap is not None else out
            feats.append(pool_to_vector(z.float()).cpu())
            if "label" in batch:
                labels.append(torch.as_tensor(batch["label"]).long().flatten())
    finally:
        if tap is not None:
            tap.remove()
        model.train(was_training)
    y = torch.cat(labels) if labels else None
    return torch.cat(feats), y


def resolve_feature(model: nn.Module, feature: str) -> str:
    """One module path for ``feature`` (an alias such as ``@pooled`` or a path), or a clear error."""
    from ..distiller import resolve_side
    from ..taps import resolve

    try:
        paths = resolve_side(model, feature, "the model")
    except ConfigError as e:
        raise ConfigError(f"no feature '{feature}' to evaluate: {e}; pick one with --feature "
                          "(e.g. @stage:-1, or a layer from `crossdistill list layers MODEL`)") from None
    if len(paths) != 1:
        raise ConfigError(f"--feature {feature} names {len(paths)} layers; name one (e.g. @stage:-1)")
    if paths[0] != "output":
        resolve(model, paths[0], "the model")
    return paths[0]


def extract_features(model: nn.Module, train_set: Dataset, test_set: Dataset, feature: str = "@pooled",
                     view: Optional[Callable[[Tensor], Tensor]] = None, batch_size: int = 256,
                     num_classes: Optional[int] = None) -> Features:
    """Both splits' features, once. The data sets give un-augmented samples with a ``label`` field."""
    for split, ds in (("training", train_set), ("test", test_set)):
        info = getattr(ds, "info", None)
        if info is not None and info.fields and "label" not in info.fields:
            raise DataError(f"k-NN and linear probes need class labels, but the {split} data gives only "
                            f"{', '.join(info.fields)}; evaluate on a classification data set (data.name=...)")
    train, train_y = extract(model, train_set, feature, view, batch_size)
    test, test_y = extract(model, test_set, feature, view, batch_size)
    if train_y is None or test_y is None:
        raise DataError("k-NN and linear probes need class labels, but the data set's samples have no 'label' "
                        "field; evaluate on a classification data set (data.name=...)")
    classes = num_classes or int(max(int(train_y.max()), int(test_y.max())) + 1)
    return Features(train, train_y, test, test_y, classes)


# ----------------------------------------------------------------------------------- k-NN
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


def knn_eval(features: Features, ks: Sequence[int] = (1, 20)) -> Dict[str, float]:
    """Top-1 test accuracy of the k-NN classifier for each ``k``: ``{"knn_k1": ..., "knn_k20": ...}``."""
    out = {}
    for k in ks:
        pred = knn_predict(features.train, features.train_labels, features.test, int(k), features.num_classes)
        out[f"knn_k{k}"] = float((pred == features.test_labels).float().mean())
    return out


# ----------------------------------------------------------------------------------- linear probe
def standardise(train: Tensor, test: Tensor) -> Tuple[Tensor, Tensor]:
    """L2-normalise every row, then centre and scale each dimension by the training split's statistics."""
    train, test = F.normalize(train.float(), dim=1), F.normalize(test.float(), dim=1)
    mean, std = train.mean(0), train.std(0, unbiased=False).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def linear_probe(features: Features, epochs: int = 100, lr: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 0.0, batch_size: int = 256, milestones: Sequence[float] = (0.6, 0.8),
                 seed: int = 0) -> Dict[str, float]:
    """Train a linear classifier on the cached features; ``{"linear": test top-1, "linear_train": ...}``."""
    if epochs < 1 or lr <= 0 or batch_size < 1:
        raise ConfigError(f"linear probe: epochs={epochs}, lr={lr}, batch_size={batch_size} must be positive")
    x, x_test = standardise(features.train, features.test)
    y = features.train_labels.long()
    clf = nn.Linear(x.shape[1], features.num_classes)
    nn.init.zeros_(clf.weight)
    nn.init.zeros_(clf.bias)
    opt = torch.optim.SGD(clf.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps = [math.floor(m * epochs) for m in milestones]
    g = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for epoch in range(epochs):
            for group in opt.param_groups:
                group["lr"] = lr * 0.1 ** sum(epoch >= s for s in steps)
            order = torch.randperm(x.shape[0], generator=g)
            for start in range(0, x.shape[0], batch_size):
                b = order[start:start + batch_size]
                loss = F.cross_entropy(clf(x[b]), y[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    with torch.no_grad():
        test_acc = (clf(x_test).argmax(1) == features.test_labels).float().mean()
        train_acc = (clf(x).argmax(1) == y).float().mean()
    return {"linear": float(test_acc), "linear_train": float(train_acc)}


# ----------------------------------------------------------------------------------- checkpoints
def evaluate_representation(path: str, protocol: Union[str, Sequence[str]], overrides: Sequence[str] = (),
                            ks: Sequence[int] = (1, 20), feature: str = "@pooled", write: bool = True,
                            **probe: Any) -> Dict[str, Any]:
    """Score the backbone of checkpoint ``path`` with ``protocol`` (``knn`` or ``linear``, or a list
    of both: the features are computed once) on the training and test splits of the data set it was
    trained on (or of ``data.*`` overrides), and record the result in ``eval.json`` next to the
    checkpoint. Every check runs before any feature is computed, and nothing is written unless the
    evaluation succeeds. Returns the record (for a list: ``{protocol: record}``)."""
    from ..build import cached_dataset, model_from_spec
    from ..data.seeded import AugmentedDataset
    from ..data.transforms import build_eval_transform
    from ..views import VIEWS
    from .checkpoint import atomic_write_text, load_into
    from .evaluate import checkpoint_for_eval

    protocols = [protocol] if isinstance(protocol, str) else list(protocol)
    for p in protocols:
        if p not in PROTOCOLS:
            raise ConfigError(f"unknown protocol '{p}': valid choices: {', '.join(PROTOCOLS)}")
    ks = [int(k) for k in ks]
    if "knn" in protocols and (not ks or min(ks) < 1):
        raise ConfigError(f"k-NN needs k >= 1, got {ks}")
    spec, state, data_cfg = checkpoint_for_eval(path, overrides)
    model = model_from_spec(spec)
    load_into(model, state, "network", path)
    resolve_feature(model, feature)
    if torch.cuda.is_available():  # the backbone forwards on the GPU; k-NN and the probe on the cached CPU features
        model = model.cuda()
    splits = {}
    for split in ("train", "test"):
        # the same cache as training (a reproduction evaluates many runs on one data set)
        root = os.path.expanduser(data_cfg.root) if data_cfg.root else None
        ds = cached_dataset(data_cfg.name, split, root, json.dumps(data_cfg.options, sort_keys=True))
        info = ds.info
        if "label" not in (info.fields or ("label",)) or getattr(info, "num_classes", 0) < 2:
            raise DataError(f"--protocol {protocols[0]} needs class labels, but dataset '{data_cfg.name}' gives only "
                            f"{', '.join(info.fields)}; evaluate on a classification data set (data.name=...)")
        splits[split] = AugmentedDataset(ds, build_eval_transform(info))
    if "knn" in protocols and max(ks) > len(splits["train"]):
        raise ConfigError(f"k-NN with k={max(ks)} needs at least {max(ks)} training samples, but "
                          f"'{data_cfg.name}' has {len(splits['train'])}; lower --k")
    view = VIEWS.get(spec.get("student_input", "identity"))
    feats = extract_features(model, splits["train"], splits["test"], feature, view,
                             data_cfg.eval_batch_size or data_cfg.batch_size, splits["train"].info.num_classes)
    records: Dict[str, Dict[str, Any]] = {}
    for p in protocols:
        result: Dict[str, Any] = knn_eval(feats, ks) if p == "knn" else linear_probe(feats, **probe)
        record = {**result, "checkpoint": Path(path).name, "feature": feature, "data": data_cfg.name,
                  "train_size": int(feats.train.shape[0]), "test_size": int(feats.test.shape[0])}
        if p == "linear":
            defaults = {n: q.default for n, q in inspect.signature(linear_probe).parameters.items() if n != "features"}
            record["probe"] = {**defaults, **probe}
        records[p] = record
    if write:
        target = Path(path).parent / EVAL_FILE
        try:
            held = json.loads(target.read_text()) if target.is_file() else {}
        except (OSError, ValueError):
            held = {}
        held = held if isinstance(held, dict) else {}
        held.update(records)
        atomic_write_text(json.dumps(held, indent=2, sort_keys=True), target)
    return records[protocol] if isinstance(protocol, str) else records
