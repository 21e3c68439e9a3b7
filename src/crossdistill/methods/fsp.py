"""FSP — Yim et al., 2017: match the "flow of solution procedure", Gram matrices between consecutive feature maps.

Maps: the stem and every stage output (RepDistiller's ``feat[:-1]``); each consecutive pair gives one
FSP matrix, the larger map average-pooled to the smaller one's size first (a strided stage's input
and output differ in size — RepDistiller's construction). Models without a ``stem`` module need
explicit sides. The objective is the *sum* over pairs of ``mean (G_s − G_t)²`` (RepDistiller's
``sum(loss_group)``; ``fsp_loss`` averages, so it is multiplied by the number of pairs).

FSP matrices only compare when channel counts agree map by map: where they differ, a 1×1 projector
maps the student's map into the teacher's channels (``projector="standard"``) or the teacher's into
the student's (``"inverted"``); where they agree (resnet32x4 → resnet8x4) there is none.

Phases: like the paper and RepDistiller, FSP is an *initialisation*: the init phase (``init_epochs``,
30) trains the student's body (every parameter but the classifier) and any projectors on the FSP
objective, unscaled by the weight; RepDistiller then drops the term (only CE afterwards).
``in_main=False`` (default) switches the term off in main training; ``in_main=True`` keeps it with weight β
(default 50, the value in RepDistiller's script, which its code never applies).
"""
from __future__ import annotations

from typing import Literal, Optional

import torch.nn as nn

from ..errors import ConfigError
from ..losses import fsp_loss
from ..projectors import Projector, ProjectorOptions, match_spatial, spectrum_logs
from .ab import body_parameters
from .base import Method, register_method


def consecutive_pairs(maps):
    """``(f_i, f_{i+1})`` with the larger of the two pooled to the smaller's spatial size."""
    pairs = []
    for a, b in zip(maps[:-1], maps[1:]):
        size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
        pairs.append((match_spatial(a, size), match_spatial(b, size)))
    return pairs


@register_method("fsp")
class FSP(Method):
    default_weight = 50.0
    default_student = ("stem", "@stages")
    default_teacher = ("stem", "@stages")

    def __init__(self, projector: Literal["standard", "inverted"] = "standard", init_epochs: int = 30,
                 in_main: bool = False, projector_options: Optional[ProjectorOptions] = None, **sides):
        super().__init__(**sides)
        self.projector_options = ProjectorOptions.coerce(projector_options)
        self.projector_direction = projector
        self.init_epochs = init_epochs
        self.in_main = in_main

    def build(self, s, t):
        if len(s) != len(t) or len(s) < 2 or any(f.dim() != 4 for f in s + t):
            raise ConfigError(f"fsp: needs the same number (≥ 2) of [B, C, H, W] maps on each side, "
                              f"got {len(s)} and {len(t)}")
        direction = [self.projector_direction if fs.shape[1] != ft.shape[1] else "identity" for fs, ft in zip(s, t)]
        self.projectors = nn.ModuleList(Projector(fs.shape[1:], ft.shape[1:], d, "linear", self.projector_options)
                                        for fs, ft, d in zip(s, t, direction))

    def flow_loss(self, s, t):
        projected = [p(fs, ft) for fs, ft, p in zip(s, t, self.projectors)]
        s_pairs = consecutive_pairs([zs for zs, _ in projected])
        t_pairs = consecutive_pairs([zt for _, zt in projected])
        return fsp_loss(s_pairs, t_pairs) * len(s_pairs)

    def active_in(self, phase: str) -> bool:
        return self.in_main if phase == "main" else phase in self.extra_phases()

    def forward(self, s, t, batch):
        return {"loss": self.flow_loss(s, t), **spectrum_logs(self.projectors)}

    # -- init phase: the student's body learns the teacher's flow ---------------------------------
    def extra_phases(self):
        return {"init": self.init_epochs}

    def phase_loss(self, phase, s, t, batch):
        loss = self.flow_loss(s, t)
        # the Distiller multiplies every phase's loss by `weight`, which is β of the main loss only
        return {"loss": loss, **spectrum_logs(self.projectors)}

    def phase_parameters(self, phase, student):
        return list(self.projectors.parameters()) + body_parameters(student)
