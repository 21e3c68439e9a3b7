"""Image classification: logits ``[B, K]`` against the batch field ``"label"`` ``[B]``.

Option ``label_smoothing`` (ε, default 0): the cross-entropy target is ``(1 − ε)·onehot + ε/K``
(Szegedy et al. 2016; ``F.cross_entropy(label_smoothing=ε)``) — the standard regulariser a user
tries first, here as the baseline of the teacher-free regulariser study.
"""
from __future__ import annotations

from typing import Annotated, Dict

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from ..checks import check_class_targets
from ..errors import ConfigError
from .base import Task, check_target, register_task


def metrics_device(metrics):
    """The device a metric collection lives on (the caller keeps it on CPU; the model may not be)."""
    return next(iter(metrics.values())).device


@register_task("classification")
class ClassificationTask(Task):
    name = "classification"
    target_key = "label"
    primary_metric = "acc"
    higher_is_better = True

    def __init__(self, num_classes: int | None = None, label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0):
        if num_classes is None or int(num_classes) < 2:
            raise ConfigError(f"task 'classification' needs num_classes >= 2, got {num_classes}")
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ConfigError(f"task 'classification': label_smoothing must be in [0, 1), got {label_smoothing}")
        super().__init__(int(num_classes))
        self.label_smoothing = float(label_smoothing)

    def output_channels(self) -> int:
        return self.num_classes

    def loss(self, output: Tensor, batch: Dict[str, Tensor]) -> Tensor:
        label = check_target(batch, self.target_key, self.name).to(output.device).long()
        try:
            return F.cross_entropy(output.float(), label, label_smoothing=self.label_smoothing)
        except (IndexError, RuntimeError):
            check_class_targets(label, self.num_classes, self.target_key, self.name)
            raise

    def metrics(self) -> MetricCollection:
        m = {"acc": MulticlassAccuracy(self.num_classes, top_k=1, average="micro")}
        if self.num_classes >= 10:
            m["acc5"] = MulticlassAccuracy(self.num_classes, top_k=5, average="micro")
        # compute_groups=False: top-1 and top-5 states can coincide on the first batch, and
        # torchmetrics would then merge them into one group for good.
        return MetricCollection(m, compute_groups=False)

    def update_metrics(self, metrics, output: Tensor, batch: Dict[str, Tensor]) -> None:
        label = check_target(batch, self.target_key, self.name)
        dev = metrics_device(metrics)
        metrics.update(output.detach().float().to(dev), label.to(dev).long())
