"""MLKD — Jin et al., CVPR 2023: logits aligned per instance, batch and class, at 5 temperatures, on 2 views.

As the released code (``losses.mlkd_levels``): the instance level is KD at each temperature
``[T, 3, 5, 2, 6]`` (T = 4) on both views; the batch level matches the samples' ``B × B``
prediction similarity and the class level the classes' ``K × K`` co-occurrence, on the weak view;
the confidence masks of the code act as one factor each (docs/zoo.md). The total is
``kd_weight · (instance + batch + class) + strong_ce_weight · CE(student on the strong view)``, the
cross-entropy on the weak view being the task loss (``distill.task_weight``: 0.1 as the code).

Views: the student reads ``input`` (weak) and ``strong_view`` (``input_1``, from ``data.copies: 2``
with ``data.copy_augment: [crop_flip, randaugment]``). The teacher must see both views too: the
Distiller runs each teacher once, on its own field, so the recipe declares the same teacher twice —
``teachers: {default: ..., strong: {checkpoint: <same>, input_field: input_1}}`` — and the term reads
both, ``from_teacher: [default, strong]``, weak first.
"""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Tuple

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ..errors import ConfigError, DataError
from ..losses import mlkd_levels
from .base import TARGET, DataSetup, Method, NonNegative, Positive, register_method
from .logit_standardization import StandardizedLogits


@register_method("mlkd")
class MLKD(StandardizedLogits, Method):
    paper: ClassVar[str] = "Jin et al., CVPR 2023 — Multi-Level Logit Distillation"
    year: ClassVar[int] = 2023
    kind: ClassVar[str] = "logits"
    zoo = True
    default_weight = 1.0  # kd_weight and strong_ce_weight carry the reference's weights
    combine_teachers: ClassVar[Literal["mean", "separate"]] = "separate"  # the teacher on the weak, then the strong view

    def __init__(self, T: Positive = 4.0, extra_temperatures: Tuple[Positive, ...] = (3.0, 5.0, 2.0, 6.0),
                 kd_weight: NonNegative = 0.9, strong_ce_weight: NonNegative = 0.1,
                 strong_view: Annotated[str, Field(pattern=r"^input(_[1-9][0-9]*)?$")] = "input_1",
                 standardize: bool = False, **sides):
        super().__init__(**sides)
        if len(extra_temperatures) < 2:
            raise ConfigError("mlkd: extra_temperatures needs at least 2 values (the code's last two read the weak "
                              f"view on the strong-view line), got {list(extra_temperatures)}")
        self.temperatures = (float(T), *map(float, extra_temperatures))
        self.kd_weight, self.strong_ce_weight = kd_weight, strong_ce_weight
        self.extra_student_inputs = (strong_view,)
        self.standardize = standardize
        self._task = None

    def setup(self, data: DataSetup) -> None:
        self._task = data.task
        if data.task is not None and data.task != "classification" and self.strong_ce_weight > 0:
            raise ConfigError(f"mlkd adds a cross-entropy on the strong view, which needs class targets; task "
                              f"'{data.task}' has none (set strong_ce_weight: 0)")

    def build(self, s, t):
        if len(t) != 2:
            raise ConfigError(
                f"mlkd needs the teacher on both views, got {len(t)} teacher tensor(s): declare the teacher a second "
                f"time with input_field: {self.extra_student_inputs[0]} and read both, e.g. teachers: {{default: ..., "
                f"strong: {{checkpoint: <same>, input_field: {self.extra_student_inputs[0]}}}}} and from_teacher: "
                "[default, strong] (the cifar100 mlkd recipes do)")
        if len(s) != 2 or s[0].dim() != 2:
            raise ConfigError(f"mlkd reads [B, K] logits on two views; got {[tuple(x.shape) for x in s]}")

    def forward(self, s, t, batch):
        levels = mlkd_levels(s[0], t[0], s[1], t[1], self.temperatures, self.standardize)
        loss = self.kd_weight * (levels["instance"] + levels["batch"] + levels["class"])
        parts = {k: v.detach() for k, v in levels.items()}
        if self.strong_ce_weight > 0:
            target = batch.get(TARGET)
            if not isinstance(target, Tensor):
                raise DataError("mlkd's strong-view cross-entropy needs the class targets under batch['target'] "
                                "(or set strong_ce_weight: 0)")
            ce = F.cross_entropy(s[1], target.to(s[1].device).long())
            loss = loss + self.strong_ce_weight * ce
            parts["strong_ce"] = ce.detach()
        return {"loss": loss, **parts}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, temperatures={list(self.temperatures)}, kd_weight={self.kd_weight}, "
                f"strong_ce_weight={self.strong_ce_weight}, strong_view={self.extra_student_inputs[0]!r}, "
                f"standardize={self.standardize}")
