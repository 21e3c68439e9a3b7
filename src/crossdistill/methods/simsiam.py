"""SimSiam — Chen & He 2021: a self-supervised objective (predict one view's projection from the other's), no teacher.

No negatives and no momentum encoder: the two views' pooled features go through a projector
``f`` (3 layers, BN after each — SimSiam's, its last BN without ReLU) and a bottleneck predictor
``h`` (``d → d/4 → d``); the loss is symmetric with a stop-gradient on the target,
``½·D(h(f(x¹)), sg f(x²)) + ½·D(h(f(x²)), sg f(x¹))`` with ``D = 2 − 2·cos``
(``losses.normalized_regression_loss``; SimSiam writes ``−cos``, the same gradient up to the
factor 2). Use with ``task: self_supervised``, ``data.copies: 2``, ``data.augment: ssl``. The
heads are term modules, dropped at export. Small batches learn slowly with SimSiam: SimCLR is the
default in the reproductions.
"""
from __future__ import annotations

from typing import Annotated, Optional

import torch.nn as nn
from pydantic import Field

from ..errors import ConfigError
from ..losses import normalized_regression_loss
from ..projectors import MLPHead, pool_to_vector
from .base import Method, register_method


@register_method("simsiam")
class SimSiam(Method):
    paper = "Chen & He, CVPR 2021 — Exploring Simple Siamese Representation Learning"
    year = 2021
    kind = "self-supervised"
    needs_teacher = False
    default_student = "@pooled"
    default_teacher = ()

    def __init__(self, proj_dim: Optional[Annotated[int, Field(gt=0)]] = None,
                 pred_dim: Optional[Annotated[int, Field(gt=0)]] = None,
                 second_view: Annotated[str, Field(pattern=r"^input(_[1-9][0-9]*)?$")] = "input_1", **sides):
        super().__init__(**sides)
        self.proj_dim, self.pred_dim = proj_dim, pred_dim
        self.extra_student_inputs = (second_view,)

    def build(self, s, t):
        if len(s) != 2:
            raise ConfigError(f"simsiam reads one student side on two views; got {len(s) // 2} side(s)")
        d = pool_to_vector(s[0]).shape[1]
        p = self.proj_dim or d
        self.projector = nn.Sequential(MLPHead(d, (d, d), p), nn.BatchNorm1d(p, affine=False))
        self.predictor = MLPHead(p, (self.pred_dim or max(1, p // 4),), p)

    def forward(self, s, t, batch):
        z1, z2 = self.projector(pool_to_vector(s[0])), self.projector(pool_to_vector(s[1]))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return 0.5 * normalized_regression_loss(p1, z2.detach()) + 0.5 * normalized_regression_loss(p2, z1.detach())
