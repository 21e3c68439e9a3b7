"""CTKD — Li et al., AAAI 2023: KD at a learned temperature that is trained adversarially (gradient reversal).

A curriculum sets how strongly the temperature may *raise* the KD loss.
``T = t_min + t_range·sigmoid(θ)`` (the released code: 1 + 20·sigmoid, θ starts at 1, so T ≈ 15.6
at step one); the loss is KD at that temperature (``T²``·KL, batch mean). θ trains with the
student's optimiser (and its weight decay, as the reference), but its gradient passes a
gradient-reversal layer scaled by the curriculum ``λ``: cosine from ``lambda_min`` (0) to
``lambda_max`` (1) over ``curriculum_epochs`` (10), read once per epoch with epochs counted from 1
— the reference's ``CosineDecay(0, −1, 10)``. ``temperature: global`` is one θ (the released code);
``instance`` is a small MLP on the (detached) teacher and student logits giving one T per sample —
described in the paper, not in the released code: our reading (docs/zoo.md).
"""
from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn as nn
from torch import Tensor

from ..losses import kd_loss_per_temperature
from .base import Method, NonNegative, Positive, PositiveInt, register_method
from .logit_standardization import StandardizedLogits


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``−strength`` (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x: Tensor, strength: float) -> Tensor:
        ctx.strength = float(strength)
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return -ctx.strength * grad, None


def reversal_strength(epoch: int, lambda_min: float, lambda_max: float, epochs: int) -> float:
    """The curriculum: cosine from ``lambda_min`` to ``lambda_max`` over ``epochs``, at the ``epoch``-th
    epoch counted from 1 (held at ``lambda_max`` after)."""
    i = min(max(epoch, 0), epochs)
    return lambda_min + (lambda_max - lambda_min) * (1.0 - math.cos(i * math.pi / epochs)) / 2.0


@register_method("ctkd")
class CTKD(StandardizedLogits, Method):
    paper: ClassVar[str] = "Li et al., AAAI 2023 — Curriculum Temperature for Knowledge Distillation"
    year: ClassVar[int] = 2023
    kind: ClassVar[str] = "logits"
    zoo = True
    default_weight = 0.9  # the reference's CIFAR script: γ = 0.1, α = 0.9

    def __init__(self, temperature: Literal["global", "instance"] = "global", t_min: Positive = 1.0,
                 t_range: Positive = 20.0, lambda_min: NonNegative = 0.0, lambda_max: NonNegative = 1.0,
                 curriculum_epochs: PositiveInt = 10, hidden: PositiveInt = 256, standardize: bool = False, **sides):
        super().__init__(**sides)
        self.mode, self.t_min, self.t_range = temperature, t_min, t_range
        self.lambda_min, self.lambda_max, self.curriculum_epochs = lambda_min, lambda_max, curriculum_epochs
        self.hidden = hidden
        self.standardize = standardize
        self.strength = reversal_strength(1, lambda_min, lambda_max, curriculum_epochs)

    def build(self, s, t):
        if self.mode == "global":
            self.theta = nn.Parameter(torch.ones(1))  # the reference's Global_T starts at 1
        else:
            k = s[0].shape[1]
            self.temperature_mlp = nn.Sequential(nn.Linear(2 * k, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 1))

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self.strength = reversal_strength(epoch + 1, self.lambda_min, self.lambda_max, self.curriculum_epochs)

    def temperature(self, zs: Tensor, zt: Tensor) -> Tensor:
        """``[1]`` (global) or ``[B]`` (instance) temperatures, behind the gradient reversal."""
        if self.mode == "global":
            raw = self.theta
        else:
            raw = self.temperature_mlp(torch.cat([zt, zs], dim=1).detach()).squeeze(1)
        raw = GradientReversal.apply(raw, self.strength)
        return self.t_min + self.t_range * torch.sigmoid(raw)

    def forward(self, s, t, batch):
        T = self.temperature(s[0], t[0])
        loss = kd_loss_per_temperature(*self.standardized(s[0], t[0]), T)
        return {"loss": loss, "temperature": T.mean().detach(), "lambda": loss.new_tensor(self.strength)}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, temperature={self.mode!r}, T in ({self.t_min}, {self.t_min + self.t_range}), "
                f"lambda {self.lambda_min}→{self.lambda_max} over {self.curriculum_epochs} epochs, "
                f"standardize={self.standardize}")
