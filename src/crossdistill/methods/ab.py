"""AB — Heo et al., 2019: transfer activation boundaries (which neurons fire) with a margin loss on pre-activations.

At every tapped stage the student's pre-activation map (through a connector where the shapes differ)
is pushed above ``+margin`` where the teacher's neuron is on and below ``−margin`` where it is off
(``ab_loss``). As in RepDistiller the stage terms are weighted ``2^(i−L+1)`` (the deepest stage 1,
then 1/2, 1/4, …) and scaled by 3/1000.

Sides (``@preacts``): the pre-activation maps the reference reads, as the model declares them in
``preact_layers`` — on the CIFAR ResNets the pre-ReLU sum of each stage's last block (the *input* of
its final ReLU, read with an input tap), on WRN the batch-normalised stage output (the output of the
BN that opens the next block, or of the closing BN). A model that declares none falls back to its
stage outputs (``@stages``); AB then refuses an identity connector on a map that never goes negative
(a post-ReLU map cannot go below ``−margin``): tap the pre-activations or set ``connect_equal: true``.

Connector (``projector``): ``"standard"`` — as the reference, none where the student's and teacher's
maps have the same shape, else a 1×1 conv-BN from the student's map into the teacher's channels
(resized to the student's size); ``connect_equal: true`` adds one everywhere. ``"inverted"`` — from
the teacher's map into the student's channels, always. AB uses only the target's sign, which has no
gradient, so an inverted connector stays at its random initialisation: the student then learns the
boundaries of a fixed random 1×1 mix of the teacher's channels.

Phases: like the paper and RepDistiller, AB is an *initialisation* (:class:`InitPhase`): the init phase
(``init_epochs``, 30) trains the connectors and the student's body (every student parameter but the
classifier) on the loss above. RepDistiller then sets the AB term to 0 for main training (only CE,
plus KD if configured); that is the default here (``in_main=False``: no teacher forward for it);
``in_main=True`` keeps the AB loss on with weight β (default 1, the value in RepDistiller's script,
which its code never applies).
"""
from __future__ import annotations

from typing import Literal

import torch.nn as nn

from ..errors import ConfigError
from ..losses import ab_loss
from ..projectors import spectrum_logs
from .base import InitPhase, NonNegative, NonNegativeInt, check_pairs, register_method, student_body_parameters
from .projected import ProjectedMethod


@register_method("ab")
class AB(InitPhase, ProjectedMethod):
    paper = "Heo et al., AAAI 2019 — Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons"
    year = 2019
    kind = "features"
    zoo = True
    default_weight = 1.0
    default_student = "@preacts"
    default_teacher = "@preacts"
    float32_inputs = False  # its loss upcasts inside its first pass (losses/features.py)

    def __init__(self, projector_kind: Literal["linear", "conv_bn"] = "conv_bn", connect_equal: bool = False,
                 margin: NonNegative = 1.0, init_epochs: NonNegativeInt = 30, in_main: bool = False, **options):
        super().__init__(**options)
        self.projector_kind = projector_kind
        self.connect_equal = connect_equal
        self.margin = margin
        self.init_epochs = init_epochs
        self.in_main = in_main

    def build(self, s, t):
        check_pairs("ab", s, t, maps=True)
        connectors = []
        for i, (fs, ft) in enumerate(zip(s, t)):
            direction = self.projector_direction
            if direction == "standard" and fs.shape[1:] == ft.shape[1:] and not self.connect_equal:
                direction = "identity"  # the reference: no connector between maps of the same shape
                if bool((fs >= 0).all()):
                    raise ConfigError(
                        f"ab: student map {i} is never negative (a post-ReLU map?), so without a connector it can "
                        f"never go below −margin; tap the pre-activations (side '...:input' of the ReLU, or a model "
                        f"that declares preact_layers) or set connect_equal: true")
            connectors.append(self.make_projector(fs.shape[1:], ft.shape[1:], self.projector_kind, direction))
        self.connectors = nn.ModuleList(connectors)

    def boundary_loss(self, s, t):
        n = len(s)
        total = 0.0
        for i, (fs, ft, connector) in enumerate(zip(s, t, self.connectors)):
            total = total + 2.0 ** (i - n + 1) * ab_loss(*connector(fs, ft), margin=self.margin)
        return total * 3 / 1000

    def forward(self, s, t, batch):
        return {"loss": self.boundary_loss(s, t), **spectrum_logs(self.connectors)}

    # -- init phase: the connectors and the student's body learn the boundaries ------------------
    def init_loss(self, s, t, batch):
        return {"loss": self.boundary_loss(s, t), **spectrum_logs(self.connectors)}

    def init_parameters(self, student):
        return list(self.connectors.parameters()) + student_body_parameters(student)
