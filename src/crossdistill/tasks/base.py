"""What a task is: the batch field it reads, its loss, its metrics.

A batch is a ``dict[str, Tensor]``: ``"input"`` (``[B, C, H, W]`` float) plus one field per task
target (``"label"`` ``[B]`` long, ``"mask"`` ``[B, H, W]`` long with 255 = ignore, ``"depth"``
``[B, 1, H, W]`` float metres with 0 = invalid, ``"translation"`` ``[B, 3, H, W]`` float in [0, 1]),
and optional extras such as ``"index"`` (position in the dataset).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from ..errors import DataError
from ..registry import Registry


class Task:
    name: str = ""
    target_key: str = ""
    primary_metric: str = ""
    higher_is_better: bool = True
    #: the student side the task scores (``"output"``, or a feature such as ``"@pooled"``)
    output_side: str = "output"
    #: False for tasks that learn without labels: methods then get no labels either
    uses_labels: bool = True

    def __init__(self, num_classes: int | None = None):
        self.num_classes = num_classes

    def output_channels(self) -> int:
        """How many output channels / logits the model's head needs for this task."""
        raise NotImplementedError

    def loss(self, output: Tensor, batch: Dict[str, Tensor]) -> Optional[Tensor]:
        """The task's own loss, or ``None`` for a task without one (self-supervised)."""
        raise NotImplementedError

    def metrics(self):
        """A fresh ``torchmetrics.MetricCollection`` (kept on CPU by the caller)."""
        raise NotImplementedError

    def update_metrics(self, metrics, output: Tensor, batch: Dict[str, Tensor]) -> None:
        raise NotImplementedError

    @staticmethod
    def compute_metrics(metrics) -> Dict[str, float]:
        return {k: float(v) for k, v in metrics.compute().items()}


TASKS: Registry[type] = Registry("task")
register_task = TASKS.register


def create_task(name: str, num_classes: int | None = None, **options) -> Task:
    """A registered task; ``options`` are the task's own (config ``task_options``, e.g.
    ``label_smoothing`` for classification), checked against its signature by the config."""
    return TASKS.get(name)(num_classes=num_classes, **options)


def check_target(batch: Dict[str, Tensor], key: str, task: str) -> Tensor:
    if key not in batch:
        raise DataError(
            f"task '{task}' needs the batch field '{key}', but the dataset gives only "
            f"{sorted(batch)}; pick a dataset that provides '{key}' or another task"
        )
    t = batch[key]
    return t if isinstance(t, torch.Tensor) else torch.as_tensor(t)
