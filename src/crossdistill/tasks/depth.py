"""Monocular depth: one output channel against ``"depth"`` ``[B, 1, H, W]`` metres (0 = invalid).

The model's output is read as **log-depth**: ``pred = exp(output)``. This keeps predictions positive
without a clamp and makes the loss exact: ``log pred = output``.

Loss: the scale-invariant log loss of Eigen et al. (2014) in the common form used by BTS/AdaBins,
over all valid pixels of the batch, with ``d = log pred − log gt`` and ``λ = 0.5`` (the value Eigen
et al. trained with; BTS/AdaBins use 0.85, which leaves the global scale only 15 % of the weight and
makes short runs learn metric depth very slowly — measured on the built-in scenes)::

    L = 10 · sqrt( mean(d²) − λ · mean(d)² )

(``λ < 1`` keeps the radicand ≥ (1 − λ)·mean(d²) ≥ 0; the ×10 only rescales the gradient.)

Metrics (on valid pixels, computed per image then averaged over images, as in the usual NYUv2
protocol): ``abs_rel = mean|pred − gt|/gt``, ``rmse = sqrt(mean (pred − gt)²)``,
``delta1 = fraction of max(pred/gt, gt/pred) < 1.25``. Images without a valid pixel are skipped.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from .base import Task, check_target, register_task
from .classification import metrics_device

SILOG_LAMBDA = 0.5
SILOG_SCALE = 10.0
_MAX_LOG_DEPTH = 20.0  # exp(20) ≈ 5e8 m: only guards exp() against overflow


def silog_loss(log_pred: Tensor, gt: Tensor, lam: float = SILOG_LAMBDA, scale: float = SILOG_SCALE) -> Tensor:
    """``scale · sqrt(mean(d²) − lam · mean(d)²)`` with ``d = log_pred − log gt`` over ``gt > 0``."""
    valid = gt > 0
    if not valid.any():
        return log_pred.sum() * 0.0
    d = log_pred[valid] - torch.log(gt[valid])
    return scale * torch.sqrt((d.pow(2).mean() - lam * d.mean().pow(2)).clamp_min(1e-12))


class _PerImageDepthMetric(Metric):
    """Mean over images of a per-image statistic on valid pixels; sum states, so DDP-safe."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def per_image(self, pred: Tensor, gt: Tensor, valid: Tensor, n: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, pred: Tensor, target: Tensor) -> None:
        pred, gt = pred.float(), target.float()
        valid = gt > 0
        dims = tuple(range(1, gt.dim()))
        n = valid.sum(dim=dims)
        gt_safe = torch.where(valid, gt, torch.ones_like(gt))
        pred_safe = torch.where(valid, pred, torch.ones_like(pred))
        vals = self.per_image(pred_safe, gt_safe, valid, n)
        keep = n > 0
        self.total += vals[keep].double().sum()
        self.count += keep.sum()

    def compute(self) -> Tensor:
        return (self.total / self.count).float()

    @staticmethod
    def _mean(x: Tensor, valid: Tensor, n: Tensor) -> Tensor:
        return (x * valid).sum(dim=tuple(range(1, x.dim()))) / n.clamp_min(1)


class AbsRel(_PerImageDepthMetric):
    higher_is_better = False

    def per_image(self, pred, gt, valid, n):
        return self._mean((pred - gt).abs() / gt, valid, n)


class RMSE(_PerImageDepthMetric):
    higher_is_better = False

    def per_image(self, pred, gt, valid, n):
        return self._mean((pred - gt).pow(2), valid, n).sqrt()


class Delta1(_PerImageDepthMetric):
    higher_is_better = True

    def per_image(self, pred, gt, valid, n):
        return self._mean((torch.maximum(pred / gt, gt / pred) < 1.25).float(), valid, n)


@register_task("depth")
class DepthTask(Task):
    name = "depth"
    target_key = "depth"
    primary_metric = "delta1"
    higher_is_better = True

    def output_channels(self) -> int:
        return 1

    def _log_pred_and_gt(self, output: Tensor, batch: Dict[str, Tensor]):
        gt = check_target(batch, self.target_key, self.name)
        if gt.dim() == 3:
            gt = gt.unsqueeze(1)
        gt = gt.to(output.device).float()
        log_pred = output.float()
        if log_pred.shape[-2:] != gt.shape[-2:]:
            log_pred = F.interpolate(log_pred, size=gt.shape[-2:], mode="bilinear", align_corners=False)
        return log_pred, gt

    def loss(self, output: Tensor, batch: Dict[str, Tensor]) -> Tensor:
        return silog_loss(*self._log_pred_and_gt(output, batch))

    def metrics(self) -> MetricCollection:
        metrics = {"abs_rel": AbsRel(), "rmse": RMSE(), "delta1": Delta1()}
        return MetricCollection(metrics, compute_groups=False)

    def update_metrics(self, metrics, output: Tensor, batch: Dict[str, Tensor]) -> None:
        log_pred, gt = self._log_pred_and_gt(output.detach(), batch)
        dev = metrics_device(metrics)
        metrics.update(torch.exp(log_pred.clamp(max=_MAX_LOG_DEPTH)).to(dev), gt.to(dev))
