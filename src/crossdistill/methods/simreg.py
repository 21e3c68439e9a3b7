"""SimReg — Navaneet et al. 2021: regress the teacher's pooled feature through a deep head that is dropped after training.

The student's pooled feature ``f_s`` goes through a prediction head ``g`` and is regressed onto the
frozen teacher's pooled feature ``f_t``: ``‖n(g(f_s)) − n(f_t)‖² = 2 − 2·cos`` (n = L2
normalisation; ``losses.normalized_regression_loss``). The head belongs to the term, not to the
student, so ``student.pt`` is the bare backbone. Choices (``docs/simreg.md`` has the reasons):

- ``head_layers``: 0 (no head: the widths must agree), 1 (linear), 2, 4 (default) — widths
  ``(m, 2m, m, 2m, …, d_out)``, ``m`` the head's input width (the student's, or ``head_width``).
  ``head_variant="paper"`` (default): Linear+BN+ReLU between layers, none after the last (the
  paper's text). ``"code"``: the released code's heads — 4 layers without BN+ReLU after the 2nd,
  2 layers without any, and the linear head as BN + Linear.
- several teachers (``from_teacher: [a, b]``): one independent head per teacher; the loss is the
  mean of the per-teacher losses, or weighted by ``teacher_weights`` (normalised to sum 1). The
  teachers' tensors reach the term one by one (``combine_teachers = "separate"``), never averaged.
- ``projector="inverted"``: the head sits on the teacher side instead (teacher → student space)
  and the student's own feature is regressed, ``‖n(f_s) − n(g(f_t))‖²``. Nothing then anchors
  the target: ``g`` can map every image to one direction, which the student copies at zero loss
  (collapse); kept to measure it.
"""
from __future__ import annotations

from typing import Annotated, List, Literal, Optional

import torch.nn as nn
from pydantic import Field

from ..errors import ConfigError, ShapeError
from ..losses import normalized_regression_loss
from ..projectors import MLPHead, pool_to_vector
from .base import Method, register_method


def head_hidden_widths(m: int, layers: int) -> List[int]:
    """Hidden widths of a ``layers``-deep head on input width ``m``: 2m, m, 2m, m, ... (``layers − 1`` of them)."""
    return [2 * m if i % 2 == 0 else m for i in range(layers - 1)]


def build_head(in_dim: int, out_dim: int, layers: int, variant: str = "paper", width: Optional[int] = None) -> nn.Module:
    """SimReg's prediction head: ``Identity`` for 0 layers, else an :class:`MLPHead`."""
    if layers == 0:
        if in_dim != out_dim:
            raise ShapeError(f"simreg head_layers=0 compares the features directly, but they are {in_dim}-d and "
                             f"{out_dim}-d; use head_layers >= 1")
        return nn.Identity()
    hidden = head_hidden_widths(width or in_dim, layers)
    if variant == "paper":
        return MLPHead(in_dim, hidden, out_dim)
    plain = (1,) if layers == 4 else tuple(range(len(hidden)))  # released code: BN+ReLU only for 4 layers, not after the 2nd
    return MLPHead(in_dim, hidden, out_dim, plain=plain, input_norm=layers == 1)


@register_method("simreg")
class SimReg(Method):
    paper = "Navaneet et al., BMVC 2021 — SimReg: Regression as a Simple Yet Effective Tool for Self-supervised Knowledge Distillation"
    year = 2021
    kind = "regression"
    default_weight = 1.0
    default_student = "@pooled"
    default_teacher = "@pooled"
    combine_teachers = "separate"

    def __init__(self, head_layers: Annotated[int, Field(ge=0, le=8)] = 4,
                 head_variant: Literal["paper", "code"] = "paper",
                 head_width: Optional[Annotated[int, Field(gt=0)]] = None,
                 projector: Literal["standard", "inverted"] = "standard",
                 teacher_weights: Optional[List[Annotated[float, Field(ge=0)]]] = None, **sides):
        super().__init__(**sides)
        self.head_layers, self.head_variant, self.head_width = int(head_layers), head_variant, head_width
        self.projector_direction = projector
        if teacher_weights is not None:
            if len(teacher_weights) != len(self.from_teacher):
                raise ConfigError(f"simreg teacher_weights has {len(teacher_weights)} value(s) for "
                                  f"{len(self.from_teacher)} teacher(s) {self.from_teacher}; give one per teacher")
            if sum(teacher_weights) <= 0:
                raise ConfigError("simreg teacher_weights must not all be 0")
        w = list(teacher_weights) if teacher_weights is not None else [1.0] * len(self.from_teacher)
        self.teacher_weights = [x / sum(w) for x in w]

    def build(self, s, t):
        n = len(self.from_teacher)
        if len(s) != 1 or len(t) != n:
            raise ConfigError(f"simreg regresses one feature per network (default @pooled); got {len(s)} student and "
                              f"{len(t)} teacher tensor(s) for {n} teacher(s): give one side each")
        d_s = pool_to_vector(s[0]).shape[1]
        heads = []
        for z_t in t:
            d_t = pool_to_vector(z_t).shape[1]
            d_in, d_out = (d_s, d_t) if self.projector_direction == "standard" else (d_t, d_s)
            heads.append(build_head(d_in, d_out, self.head_layers, self.head_variant, self.head_width))
        self.heads = nn.ModuleList(heads)  # heads[i] belongs to from_teacher[i]

    def forward(self, s, t, batch):
        f_s = pool_to_vector(s[0])
        losses = []
        for head, z_t in zip(self.heads, t):
            f_t = pool_to_vector(z_t)
            if self.projector_direction == "standard":
                losses.append(normalized_regression_loss(head(f_s), f_t))
            else:
                losses.append(normalized_regression_loss(f_s, head(f_t)))
        if len(losses) == 1:
            return losses[0]
        total = sum(w * loss for w, loss in zip(self.teacher_weights, losses))
        return {"loss": total, **{name: loss for name, loss in zip(self.from_teacher, losses)}}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, head_layers={self.head_layers}, head_variant={self.head_variant}, "
                f"projector={self.projector_direction}, teachers={self.from_teacher}")
