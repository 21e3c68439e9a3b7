"""VID — Ahn et al., 2019: maximise a variational lower bound on teacher–student mutual information (Gaussian NLL).

At every tapped stage a regressor predicts the mean of a Gaussian with a learnt per-channel
variance, and the loss is its negative log-likelihood (``vid_loss``). The regressor is the
reference's three 1×1 convolutions with ReLUs between them (hidden width = output width), and the
variance starts at σ² = 5. Its direction:

- ``projector="standard"`` (the paper): the regressor reads the student and predicts the teacher's
  map, ``−log q(t | s)``, with one variance per teacher channel;
- ``projector="inverted"`` (Learning to Project): it reads the teacher and predicts the student's
  map, ``−log q(s | t)``, with one variance per student channel.

Maps are compared at the student's spatial size. Per-stage losses are summed, as in RepDistiller,
whose ``β = 1`` assumes that sum of per-element means.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..losses import vid_loss
from ..projectors import match_spatial
from .base import Method, Positive, check_pairs, register_method


def regressor(c_in: int, c_out: int) -> nn.Sequential:
    """The reference's mean predictor: three 1×1 convolutions with ReLUs between them."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 1, bias=False), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 1, bias=False))


@register_method("vid")
class VID(Method):
    paper = "Ahn et al., CVPR 2019 — Variational Information Distillation for Knowledge Transfer"
    year = 2019
    kind = "features"
    zoo = True
    default_weight = 1.0
    default_student = "@stages"
    default_teacher = "@stages"
    float32_inputs = False  # its loss upcasts inside its first pass (losses/features.py)

    def __init__(self, projector: Literal["standard", "inverted"] = "standard", init_variance: Positive = 5.0,
                 eps: Positive = 1e-5, **sides):
        super().__init__(**sides)
        if init_variance <= eps:
            raise ConfigError(f"vid: init_variance={init_variance} must exceed eps={eps} (σ² = softplus(·) + eps)")
        self.projector_direction = projector
        self.init_variance = init_variance
        self.eps = eps

    def build(self, s, t):
        check_pairs("vid", s, t, maps=True)
        inverted = self.projector_direction == "inverted"
        pairs = [(ft.shape[1], fs.shape[1]) if inverted else (fs.shape[1], ft.shape[1]) for fs, ft in zip(s, t)]
        self.regressors = nn.ModuleList(regressor(c_in, c_out) for c_in, c_out in pairs)
        # softplus(log_scale) + eps = init_variance
        start = math.log(math.expm1(self.init_variance - self.eps))
        self.log_scales = nn.ParameterList(nn.Parameter(torch.full((c_out,), start)) for _, c_out in pairs)

    def forward(self, s, t, batch):
        losses = []
        for fs, ft, reg, log_scale in zip(s, t, self.regressors, self.log_scales):
            size = fs.shape[-2:]
            if self.projector_direction == "inverted":
                losses.append(vid_loss(match_spatial(reg(ft), size), fs, log_scale, self.eps))
            else:
                losses.append(vid_loss(reg(fs), match_spatial(ft, size), log_scale, self.eps))
        return torch.stack(losses).sum()
