"""Learning a backbone without labels: the task has no labelled loss of its own.

The objective comes from the terms: a self-supervised method such as ``simclr`` / ``simsiam`` on
two augmented views (``data.copies: 2``), or a distillation term that needs no labels (SimReg,
CRD, CC...) from a frozen teacher. The task only says what is learned and how it is watched:

- ``loss`` is ``None`` (the ``Distiller`` adds no task term) and methods get no labels
  (``uses_labels = False``: ``DataSetup.labels`` is ``None``);
- the model's output of interest is its pooled feature (``output_side = "@pooled"``); its own
  classifier layer is built (every registry model has one) but never trained or used;
- the per-epoch monitor is a **leave-one-out k-NN** (k = 20, cosine, the rule of
  :mod:`crossdistill.engine.representation`) on the test split's pooled features: each test image
  is classified by its 20 nearest *other* test images. Labels are read for this score only; the
  real evaluation is ``crossdistill eval CHECKPOINT --protocol knn|linear`` (training split as
  the bank / the probe's training data).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from .base import Task, check_target, register_task
from .knn import knn_predict

MONITOR_K = 20


class LeaveOneOutKnn(Metric):
    """Top-1 of a leave-one-out k-NN over the features seen (all of them kept; gathered under DDP)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, k: int = MONITOR_K, **kwargs):
        super().__init__(**kwargs)
        self.k = int(k)
        self.add_state("feats", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, feats: Tensor, labels: Tensor) -> None:
        self.feats.append(feats.detach().float().flatten(1))
        self.labels.append(labels.detach().long().flatten())

    def compute(self) -> Tensor:
        feats = torch.cat(self.feats) if isinstance(self.feats, list) else self.feats
        labels = torch.cat(self.labels) if isinstance(self.labels, list) else self.labels
        n = feats.shape[0]
        if n < 2:
            return torch.tensor(float("nan"))
        k = min(self.k, n - 1)
        pred = knn_predict(feats, labels, feats, k, int(labels.max()) + 1, exclude_self=True)
        return (pred == labels).float().mean()


@register_task("self_supervised")
class SelfSupervisedTask(Task):
    name = "self_supervised"
    target_key = ""          # the training batches need no target field
    primary_metric = "knn_acc"
    higher_is_better = True
    output_side = "@pooled"  # what the Distiller's predict() returns for this task
    uses_labels = False

    def __init__(self, num_classes: Optional[int] = None):
        super().__init__(num_classes)

    def output_channels(self) -> int:
        # the size of the (unused) classifier every registry model builds
        return int(self.num_classes) if self.num_classes and self.num_classes >= 2 else 2

    def loss(self, output: Tensor, batch: Dict[str, Tensor]) -> None:
        return None

    def metrics(self) -> MetricCollection:
        return MetricCollection({"knn_acc": LeaveOneOutKnn()}, compute_groups=False)

    def update_metrics(self, metrics, output: Tensor, batch: Dict[str, Tensor]) -> None:
        label = check_target(batch, "label", self.name)  # the monitor's labels, never the training's
        dev = next(iter(metrics.values())).device
        metrics.update(output.detach().float().to(dev), label.to(dev).long())
