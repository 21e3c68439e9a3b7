"""AB — Heo et al., 2019: transfer activation boundaries (which neurons fire) with a margin loss on pre-activations.

At every tapped stage the student's map, through a connector, is pushed above ``+margin`` where the
teacher's neuron is on and below ``−margin`` where it is off (``ab_loss``). As in RepDistiller the
stage terms are weighted ``2^(i−L+1)`` (the deepest stage 1, then 1/2, 1/4, …) and scaled by 3/1000.

Phases: like the paper and RepDistiller, AB is an *initialisation*: the init phase (``init_epochs``,
30) trains the connectors and the student's body (every student parameter but the classifier; those
after the tapped layers get no gradient) on the loss above, unscaled by the weight. RepDistiller then
sets the AB term to 0 for main training (only CE, plus KD if configured). That is the default here:
``in_main=False`` switches the term off in main training (no teacher forward for it); ``in_main=True`` keeps the AB loss on with weight β
(default 1, the value in RepDistiller's script, which its code never applies).

Sides: the stage outputs. The teacher side is exact whatever the model: only its sign is used and a
ReLU keeps the sign. The student side should be the pre-activation: it is for pre-activation designs
(WRN stages end without a ReLU). Where a stage ends with a ReLU (CIFAR ResNets), the loss acts on the
connector's output of the post-ReLU map — which can go negative — rather than on the block's pre-ReLU
sum, which is the *input* of the block's last ReLU and cannot be read by an output hook.

Connector (``projector``): ``"standard"`` — a 1×1 conv-BN from the student's map into the teacher's
channels (RepDistiller's connector, but always present, since a post-ReLU map cannot go below 0);
``"inverted"`` — from the teacher's map into the student's channels. AB uses only the target's sign,
which has no gradient, so an inverted connector stays at its random initialisation: the student then
learns the boundaries of a fixed random 1×1 mix of the teacher's channels, on its own map — which
must then be a pre-activation (a post-ReLU map cannot go below ``−margin``, nor revive a dead unit).
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..losses import ab_loss
from ..projectors import Projector, ProjectorOptions, spectrum_logs
from ..taps import unwrap
from .base import Method, register_method


def body_parameters(student: nn.Module) -> list:
    """The student's parameters except its classifier's (RepDistiller's ``get_feat_modules``)."""
    model = unwrap(student)
    head = getattr(model, "classifier", None)
    skip = {id(p) for p in model.get_submodule(head).parameters()} if head else set()
    return [p for p in model.parameters() if id(p) not in skip]


@register_method("ab")
class AB(Method):
    default_weight = 1.0
    default_student = "@stages"
    default_teacher = "@stages"

    def __init__(self, projector: Literal["standard", "inverted"] = "standard",
                 projector_kind: Literal["linear", "conv_bn"] = "conv_bn", margin: float = 1.0,
                 init_epochs: int = 30, in_main: bool = False, projector_options: Optional[ProjectorOptions] = None,
                 **sides):
        super().__init__(**sides)
        self.projector_options = ProjectorOptions.coerce(projector_options)
        self.projector_direction = projector
        self.projector_kind = projector_kind
        self.margin = margin
        self.init_epochs = init_epochs
        self.in_main = in_main

    def build(self, s, t):
        if len(s) != len(t):
            raise ConfigError(f"ab: {len(s)} student maps but {len(t)} teacher maps; tap as many on each side")
        direction, kind = self.projector_direction, self.projector_kind
        self.connectors = nn.ModuleList(Projector(fs.shape[1:], ft.shape[1:], direction, kind, self.projector_options)
                                        for fs, ft in zip(s, t))

    def boundary_loss(self, s, t):
        n = len(s)
        terms = [2.0 ** (i - n + 1) * ab_loss(*connector(fs, ft), margin=self.margin)
                 for i, (fs, ft, connector) in enumerate(zip(s, t, self.connectors))]
        return torch.stack(terms).sum() * 3 / 1000

    def active_in(self, phase: str) -> bool:
        return self.in_main if phase == "main" else phase in self.extra_phases()

    def forward(self, s, t, batch):
        return {"loss": self.boundary_loss(s, t), **spectrum_logs(self.connectors)}

    # -- init phase: the connectors and the student's body learn the boundaries ------------------
    def extra_phases(self):
        return {"init": self.init_epochs}

    def phase_loss(self, phase, s, t, batch):
        loss = self.boundary_loss(s, t)
        # the Distiller multiplies every phase's loss by `weight`, which is β of the main loss only
        return {"loss": loss, **spectrum_logs(self.connectors)}

    def phase_parameters(self, phase, student):
        return list(self.connectors.parameters()) + body_parameters(student)
