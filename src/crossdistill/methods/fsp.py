"""FSP — Yim et al., 2017: match the "flow of solution procedure", Gram matrices between consecutive feature maps.

Maps: the stem and every stage output (RepDistiller's ``feat[:-1]``); each consecutive pair gives one
FSP matrix, the larger map average-pooled to the smaller one's size first (a strided stage's input
and output differ in size — RepDistiller's construction). Models without a ``stem`` module need
explicit sides. The objective is the *sum* over pairs of ``mean (G_s − G_t)²`` (RepDistiller's
``sum(loss_group)``; ``fsp_loss`` averages, so it is multiplied by the number of pairs).

FSP matrices only compare when channel counts agree map by map: where they differ, a 1×1 projector
maps the student's map into the teacher's channels (``projector="standard"``) or the teacher's into
the student's (``"inverted"``); where they agree (resnet32x4 → resnet8x4) there is none.

Phases: like the paper and RepDistiller, FSP is an *initialisation* (:class:`InitPhase`): the init
phase (``init_epochs``, 30) trains the student's body (every parameter but the classifier) and any
projectors on the FSP objective; RepDistiller then drops the term (only CE afterwards).
``in_main=False`` (default) switches the term off in main training; ``in_main=True`` keeps it with
weight β (default 50, the value in RepDistiller's script, which its code never applies).
"""
from __future__ import annotations

import torch.nn as nn

from ..losses import fsp_loss
from ..projectors import match_spatial, spectrum_logs
from .base import InitPhase, NonNegativeInt, check_pairs, register_method, student_body_parameters
from .projected import ProjectedMethod


def consecutive_pairs(maps):
    """``(f_i, f_{i+1})`` with the larger of the two pooled to the smaller's spatial size."""
    pairs = []
    for a, b in zip(maps[:-1], maps[1:]):
        size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
        pairs.append((match_spatial(a, size), match_spatial(b, size)))
    return pairs


@register_method("fsp")
class FSP(InitPhase, ProjectedMethod):
    paper = "Yim et al., CVPR 2017 — A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and Transfer Learning"
    year = 2017
    kind = "features"
    zoo = True
    default_weight = 50.0
    default_student = ("stem", "@stages")
    default_teacher = ("stem", "@stages")

    def __init__(self, init_epochs: NonNegativeInt = 30, in_main: bool = False, **options):
        super().__init__(**options)
        self.init_epochs = init_epochs
        self.in_main = in_main

    def build(self, s, t):
        check_pairs("fsp", s, t, maps=True, at_least=2)
        direction = [self.projector_direction if fs.shape[1] != ft.shape[1] else "identity" for fs, ft in zip(s, t)]
        self.projectors = nn.ModuleList(self.make_projector(fs.shape[1:], ft.shape[1:], "linear", d)
                                        for fs, ft, d in zip(s, t, direction))

    def flow_loss(self, s, t):
        projected = [p(fs, ft) for fs, ft, p in zip(s, t, self.projectors)]
        s_pairs = consecutive_pairs([zs for zs, _ in projected])
        t_pairs = consecutive_pairs([zt for _, zt in projected])
        return fsp_loss(s_pairs, t_pairs) * len(s_pairs)

    def forward(self, s, t, batch):
        return {"loss": self.flow_loss(s, t), **spectrum_logs(self.projectors)}

    # -- init phase: the student's body learns the teacher's flow ---------------------------------
    def init_loss(self, s, t, batch):
        return {"loss": self.flow_loss(s, t), **spectrum_logs(self.projectors)}

    def init_parameters(self, student):
        return list(self.projectors.parameters()) + student_body_parameters(student)
