"""Image-to-image translation: ``sigmoid(output)`` ``[B, 3, H, W]`` against ``"translation"`` in [0, 1].

Loss: L1 between the image and the target. Metrics: torchmetrics PSNR (``data_range=1``; the MSE is
pooled over the whole split before the log) and SSIM (``data_range=1``, Gaussian 11×11, σ=1.5;
images must be at least 11 pixels on each side).
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from ..errors import DataError
from .base import Task, check_target, register_task
from .classification import metrics_device


@register_task("translation")
class TranslationTask(Task):
    name = "translation"
    target_key = "translation"
    primary_metric = "psnr"
    higher_is_better = True

    def output_channels(self) -> int:
        return 3

    def _image_and_target(self, output: Tensor, batch: Dict[str, Tensor]):
        target = check_target(batch, self.target_key, self.name).to(output.device).float()
        if target.dim() != 4 or target.shape[1] != output.shape[1]:
            raise DataError(
                f"task 'translation' needs '{self.target_key}' as [B, {output.shape[1]}, H, W], "
                f"got {tuple(target.shape)}"
            )
        logits = output.float()
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(logits), target

    def loss(self, output: Tensor, batch: Dict[str, Tensor]) -> Tensor:
        return F.l1_loss(*self._image_and_target(output, batch))

    def metrics(self) -> MetricCollection:
        return MetricCollection(
            {
                "psnr": PeakSignalNoiseRatio(data_range=1.0),
                "ssim": StructuralSimilarityIndexMeasure(data_range=1.0),
            },
            compute_groups=False,
        )

    def update_metrics(self, metrics, output: Tensor, batch: Dict[str, Tensor]) -> None:
        image, target = self._image_and_target(output.detach(), batch)
        dev = metrics_device(metrics)
        metrics.update(image.to(dev), target.to(dev))
