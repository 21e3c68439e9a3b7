"""DKD — Zhao et al., CVPR 2022: KD split into a target-class and a non-target-class part, reweighted.

``loss = warm-up · (α·TCKD + β·NCKD)`` (``losses.dkd_loss``), α = 1, β = 8, T = 4, with the task's
cross-entropy at weight 1 (set ``distill.task_weight: 1``). The warm-up is mdistiller's: the weight
is ``min(e / warmup, 1)`` in the ``e``-th epoch counted from 1 — it moves once per epoch, reaching 1
in epoch ``warmup`` (20). DKD needs class targets: it refuses any other task.
"""
from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from ..errors import ConfigError, DataError
from ..losses import dkd_loss
from .base import TARGET, DataSetup, Method, NonNegative, NonNegativeInt, Positive, register_method
from .logit_standardization import StandardizedLogits


@register_method("dkd")
class DKD(StandardizedLogits, Method):
    paper: ClassVar[str] = "Zhao et al., CVPR 2022 — Decoupled Knowledge Distillation"
    year: ClassVar[int] = 2022
    kind: ClassVar[str] = "logits"
    zoo = True
    default_weight = 1.0  # mdistiller: CE weight 1, the DKD loss at weight 1 (α, β inside)

    def __init__(self, alpha: NonNegative = 1.0, beta: NonNegative = 8.0, T: Positive = 4.0,
                 warmup: NonNegativeInt = 20, standardize: bool = False, **sides):
        super().__init__(**sides)
        self.alpha, self.beta, self.T, self.warmup = alpha, beta, T, warmup
        self.standardize = standardize
        self.warmup_factor = self._factor(0)

    def _factor(self, epoch: int) -> float:
        # mdistiller counts epochs from 1 and uses min(epoch / warmup, 1) for the whole epoch
        return 1.0 if self.warmup == 0 else min((epoch + 1) / self.warmup, 1.0)

    def setup(self, data: DataSetup) -> None:
        if data.task is not None and data.task != "classification":
            raise ConfigError(f"dkd splits the KL at the target class, so it needs class targets; task "
                              f"'{data.task}' has none (use kd, or dist, which need no labels)")

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self.warmup_factor = self._factor(epoch)

    def forward(self, s, t, batch):
        target = batch.get(TARGET)
        if not isinstance(target, Tensor):
            raise DataError("dkd needs the class targets under batch['target'] (the Distiller puts the task's "
                            "target there; in your own loop pass a task to the Distiller)")
        zs, zt = self.standardized(s[0], t[0])
        return self.warmup_factor * dkd_loss(zs, zt, target.to(zs.device), self.alpha, self.beta, self.T)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, alpha={self.alpha}, beta={self.beta}, T={self.T}, warmup={self.warmup}, "
                f"standardize={self.standardize}")
