"""DeiT — Touvron et al., ICML 2021: a transformer student's distillation token learns the teacher's decision.

A DeiT-distilled student carries a second token beside the class token, read by its own head
(``head_dist``, the side ``@dist_head``, declared by the zoo's ``deit_*_distilled_*`` models and by
any model with ``distilled: true``). This term trains that head against the teacher's output:

- ``distillation: hard`` (DeiT's default): cross-entropy on the teacher's argmax,
  ``L = CE(z_dist, argmax z_t)``;
- ``distillation: soft``: ``L = T²/(B·K) Σ KL(softmax(z_t/T) ‖ softmax(z_dist/T))`` (DeiT divides by
  the number of logits; ``T`` = DeiT's ``tau``, 1 by default).

DeiT's total is ``(1 − α)·CE(z_cls, y) + α·L`` with ``α = 0.5``: the default weight here is ``α`` and a
recipe sets ``distill.task_weight: 0.5``. The teacher is usually a convnet (DeiT's RegNetY-16GF):
its inductive bias reaches the transformer through this token.

Inference: DeiT averages both heads' logits at test time; the zoo's distilled models return that
mean from ``forward``, so what is evaluated and exported is DeiT's prediction. Difference from DeiT:
the task loss reads the same ``forward`` output, so the cross-entropy trains the *mean* of the two
heads (DeiT trains the class head alone); the distillation term reaches the distillation head alone,
as in DeiT.
"""
from __future__ import annotations

from typing import ClassVar, Literal

from ..errors import ConfigError
from ..losses.cross_architecture import deit_hard_loss, deit_soft_loss
from .base import Method, Positive, register_method


@register_method("deit")
class DeiT(Method):
    paper: ClassVar[str] = ("Touvron et al., ICML 2021 — Training data-efficient image transformers & "
                            "distillation through attention")
    year: ClassVar[int] = 2021
    kind: ClassVar[str] = "cross-architecture"
    default_weight = 0.5  # DeiT's alpha; its (1 − alpha) goes on the task loss (distill.task_weight)
    default_student = "@dist_head"
    default_teacher = "output"

    def __init__(self, distillation: Literal["hard", "soft"] = "hard", T: Positive = 1.0, **sides):
        super().__init__(**sides)
        self.distillation, self.T = distillation, T

    def build(self, s, t):
        if len(s) != 1 or len(t) != 1 or s[0].dim() != 2 or s[0].shape != t[0].shape:
            raise ConfigError(f"deit: needs the student's distillation-head logits and the teacher's logits, both "
                              f"[B, K] with the same K, got {[tuple(x.shape) for x in s]} and "
                              f"{[tuple(x.shape) for x in t]}; use a distilled transformer student (side '@dist_head')")

    def forward(self, s, t, batch):
        if self.distillation == "hard":
            return deit_hard_loss(s[0], t[0])
        return deit_soft_loss(s[0], t[0], self.T)
