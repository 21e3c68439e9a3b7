"""FT — Kim et al., 2018: the student mimics "factors", the code of an autoencoder (paraphraser) of the teacher's map.

Init phase (``init_epochs``, 30 in RepDistiller): the paraphraser — 3×3 convolutions down to
``rate · C`` channels and transposed convolutions back, LeakyReLU(0.1), no BN — is trained as an
autoencoder on the teacher's last-stage map with an MSE reconstruction loss (RepDistiller's init
criterion). Main phase: the paraphraser stays fixed and the student's factor is pulled towards the
teacher's with ``factor_loss(p=1, reduction="mean")`` (L2-normalised flattened factors, mean |u − v|),
RepDistiller's reduction, with its ``β = 200``.

Where the learned map sits (``projector``):

- ``"standard"`` (the paper): a translator (3×3 conv-BN-LeakyReLU ×3) on the student side maps the
  student's map into the teacher's factor space (``rate · C_t`` channels);
- ``"inverted"``: no translator; the paraphraser encodes the teacher's map straight into the
  student's channel count and the student's own map is the student factor — the only learned
  map goes teacher → student.

Factors are compared at the student's spatial size. The init phase is an :class:`InitPhase`; the
weight is β of the main loss only: the init objective is the plain reconstruction MSE, whatever the
weight.

Scale: RepDistiller's "factor" is ``normalize(mean_c f²)``, H·W values; here it is the whole
paraphrased map (``rate · C · H · W`` values, the paper's factor). The mean of ``|u − v|`` over unit
vectors shrinks like ``1/√D``, so at equal mismatch β = 200 pulls ≈ √(rate · C) times (≈ 11 for
resnet32x4) more weakly than in RepDistiller.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..losses import factor_loss, hint_loss
from ..projectors import match_spatial
from .base import InitPhase, Method, NonNegativeInt, Positive, register_method


def conv_stack(widths: Sequence[int], bn: bool = False, transposed: bool = False) -> nn.Sequential:
    """3×3 (transposed) convolutions through ``widths``, each followed by [BN] and LeakyReLU(0.1)."""
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [conv(a, b, 3, 1, 1), *([nn.BatchNorm2d(b)] if bn else []), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    def __init__(self, channels: int, factor_channels: int):
        super().__init__()
        self.encoder = conv_stack([channels, channels, factor_channels, factor_channels])
        self.decoder = conv_stack([factor_channels, factor_channels, channels, channels], transposed=True)

    def forward(self, x):
        return self.decoder(self.encoder(x))


@register_method("ft")
class FT(InitPhase, Method):
    paper = "Kim, Park & Kwak, NeurIPS 2018 — Paraphrasing Complex Network: Network Compression via Factor Transfer"
    year = 2018
    kind = "features"
    zoo = True
    default_weight = 200.0
    default_student = "@stage:-1"
    default_teacher = "@stage:-1"

    def __init__(self, projector: Literal["standard", "inverted"] = "standard", rate: Positive = 0.5,
                 init_epochs: NonNegativeInt = 30, **sides):
        super().__init__(**sides)
        self.projector_direction = projector
        self.rate = rate
        self.init_epochs = init_epochs

    def build(self, s, t):
        if s[0].dim() != 4 or t[0].dim() != 4:
            raise ConfigError(f"ft: needs [B, C, H, W] maps, got {tuple(s[0].shape)} and {tuple(t[0].shape)}")
        c_s, c_t = s[0].shape[1], t[0].shape[1]
        if self.projector_direction == "inverted":
            self.paraphraser = Paraphraser(c_t, c_s)
            self.translator = None
        else:
            c_factor = max(1, int(c_t * self.rate))
            self.paraphraser = Paraphraser(c_t, c_factor)
            self.translator = conv_stack([c_s, c_s, c_factor, c_factor], bn=True)

    def forward(self, s, t, batch):
        with torch.no_grad():  # trained in the init phase, fixed afterwards (as in the reference)
            factor_t = self.paraphraser.encoder(t[0])
        factor_s = s[0] if self.translator is None else self.translator(s[0])
        return factor_loss(factor_s, match_spatial(factor_t, factor_s.shape[-2:]), p=1, reduction="mean")

    # -- init phase: the paraphraser as an autoencoder of the teacher's map ----------------------
    def init_loss(self, s, t, batch):
        return hint_loss(self.paraphraser(t[0]), t[0])

    def init_parameters(self, student):
        return self.paraphraser.parameters()
