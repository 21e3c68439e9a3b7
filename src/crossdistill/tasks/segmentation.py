"""Semantic segmentation: logits ``[B, K, h, w]`` against ``"mask"`` ``[B, H, W]`` (255 = ignore).

Logits at another resolution than the mask are resized to it (bilinear) before loss and metrics.
mIoU is the macro mean over classes that occur in the prediction or the ground truth (torchmetrics
drops classes with an empty union), accumulated as one confusion matrix over the whole split.
"""
from __future__ import annotations

from typing import Dict

import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from ..checks import check_class_targets
from ..errors import ConfigError
from .base import Task, check_target, register_task
from .classification import metrics_device

IGNORE_INDEX = 255


def _mask_and_logits(output: Tensor, batch: Dict[str, Tensor], task: str):
    mask = check_target(batch, "mask", task)
    if mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    mask = mask.to(output.device).long()
    logits = output.float()
    if logits.shape[-2:] != mask.shape[-2:]:
        logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
    return logits, mask


@register_task("segmentation")
class SegmentationTask(Task):
    name = "segmentation"
    target_key = "mask"
    primary_metric = "miou"
    higher_is_better = True

    def __init__(self, num_classes: int | None = None):
        if num_classes is None or not 2 <= int(num_classes) < IGNORE_INDEX:
            raise ConfigError(f"task 'segmentation' needs 2 <= num_classes < 255, got {num_classes}")
        super().__init__(int(num_classes))

    def output_channels(self) -> int:
        return self.num_classes

    def loss(self, output: Tensor, batch: Dict[str, Tensor]) -> Tensor:
        logits, mask = _mask_and_logits(output, batch, self.name)
        if not (mask != IGNORE_INDEX).any():  # all ignored: a zero loss, not a NaN
            return logits.sum() * 0.0
        try:
            return F.cross_entropy(logits, mask, ignore_index=IGNORE_INDEX)
        except (IndexError, RuntimeError):
            check_class_targets(mask, self.num_classes, "mask", self.name, ignore=IGNORE_INDEX)
            raise

    def metrics(self) -> MetricCollection:
        k = self.num_classes
        return MetricCollection(
            {
                "miou": MulticlassJaccardIndex(k, average="macro", ignore_index=IGNORE_INDEX),
                "pixel_acc": MulticlassAccuracy(k, average="micro", ignore_index=IGNORE_INDEX),
            },
            compute_groups=False,
        )

    def update_metrics(self, metrics, output: Tensor, batch: Dict[str, Tensor]) -> None:
        logits, mask = _mask_and_logits(output.detach(), batch, self.name)
        dev = metrics_device(metrics)
        metrics.update(logits.argmax(1).to(dev), mask.to(dev))
