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

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, DataError
from ..projectors import pool_to_vector
from ..sides import resolve_side
from ..taps import FeatureTap, resolve
from ..tasks.knn import knn_predict  # noqa: F401 (the protocol's vote; re-exported)

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
