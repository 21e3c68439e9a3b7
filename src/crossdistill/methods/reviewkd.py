"""ReviewKD — Chen et al., CVPR 2021: fuse the student's stages deep → shallow (ABF) and match every teacher stage (HCL).

Sides: the student's stage outputs and its pooled feature (``@stages`` + ``@pooled``), the teacher's
pre-activation maps and its pooled feature (``@preacts`` + ``@pooled``) — as mdistiller reads them on
CIFAR (the student's ``feats``, the teacher's ``preact_feats[1:]``, each followed by the pooled
feature as a last 1 × 1 "stage"). A vector side is read as a ``[B, D, 1, 1]`` map.

Projector: the review chain of attention-based fusion blocks (:class:`ABF`), one per student side,
built from the dry run's shapes. From the deepest side to the shallowest, each block reduces its
stage to ``mid_channels`` (1×1 conv-BN); except for the deepest, it fuses the result with the
deeper block's (nearest-upsampled) output through two sigmoid attention maps (a 1×1 conv on both);
it resizes (nearest) to the teacher stage's size where the sizes differ, and a 3×3 conv-BN maps it
to the teacher stage's channels. ``mid_channels`` defaults to ``min(512, channels of the deepest
student side)`` (256 on resnet8x4, 128 on wrn_16_2), as the official code.

Loss: ``hcl_loss`` (losses/review.py) over the stages, times the warm-up ``min(epoch / warmup_epochs, 1)``
with mdistiller's 1-based epoch — ``(e + 1) / 20`` in our 0-based epoch ``e`` (the authors' CIFAR
script counts from 0 and so spends its first epoch at 0). The term's weight is the paper's
``kd-loss-weight``: 1 in both codes' defaults, 5 in the authors' CIFAR-100 scripts for
resnet32x4 → resnet8x4 and wrn_40_2 → wrn_16_2 (the recipes).
"""
from __future__ import annotations

from typing import ClassVar, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..losses import hcl_loss
from .base import Method, NonNegativeInt, PositiveInt, register_method


def as_map(x: Tensor) -> Tensor:
    """A vector ``[B, D]`` becomes a ``[B, D, 1, 1]`` map; maps pass through."""
    return x if x.dim() == 4 else x.reshape(x.shape[0], -1, 1, 1)


class ABF(nn.Module):
    """One attention-based fusion block of the review chain (see the module docstring)."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(c_in, c_mid, 1, bias=False), nn.BatchNorm2d(c_mid))
        self.expand = nn.Sequential(nn.Conv2d(c_mid, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.attention = nn.Sequential(nn.Conv2d(2 * c_mid, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)  # the official initialisation
        nn.init.kaiming_uniform_(self.expand[0].weight, a=1)

    def forward(self, x: Tensor, deeper: Optional[Tensor], out_size: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        """``(output in the teacher stage's space, fused map handed to the next shallower block)``."""
        x = self.reduce(x)
        if self.attention is not None:
            # σ(conv1×1([x, up(y)])) with the 1×1 conv split by input half: a 1×1 conv commutes with
            # nearest upsampling, so the deeper half runs at the deeper map's resolution and no
            # concatenated [B, 2C, H, W] map (nor its strided gradient) is ever made — the same sum
            conv = self.attention[0]
            c = x.shape[1]
            logits = F.conv2d(x, conv.weight[:, :c], conv.bias) + F.interpolate(
                F.conv2d(deeper, conv.weight[:, c:]), size=tuple(x.shape[-2:]), mode="nearest")
            w = torch.sigmoid(logits)
            deeper = F.interpolate(deeper, size=tuple(x.shape[-2:]), mode="nearest")
            x = x * w[:, :1] + deeper * w[:, 1:]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.expand(x), x


class ReviewChain(nn.Module):
    """The ABF blocks, deepest first; ``forward(student sides) -> maps shaped like the teacher's``."""

    def __init__(self, student_shapes: Sequence[torch.Size], teacher_shapes: Sequence[torch.Size],
                 mid_channels: Optional[int] = None):
        super().__init__()
        c_mid = mid_channels or min(512, student_shapes[-1][0])
        n = len(student_shapes)
        self.out_sizes = [tuple(t[-2:]) for t in teacher_shapes]
        self.blocks = nn.ModuleList(ABF(s[0], c_mid, t[0], fuse=i < n - 1)
                                    for i, (s, t) in enumerate(zip(student_shapes, teacher_shapes)))

    def forward(self, s: List[Tensor]) -> List[Tensor]:
        out: List[Tensor] = [None] * len(s)  # type: ignore[list-item]
        deeper = None
        for i in reversed(range(len(s))):
            out[i], deeper = self.blocks[i](s[i], deeper, self.out_sizes[i])
        return out


@register_method("reviewkd")
class ReviewKD(Method):
    paper: ClassVar[str] = "Chen et al., CVPR 2021 — Distilling Knowledge via Knowledge Review"
    year: ClassVar[int] = 2021
    kind: ClassVar[str] = "features"
    zoo = True
    default_weight = 1.0
    default_student = ["@stages", "@pooled"]
    default_teacher = ["@preacts", "@pooled"]

    def __init__(self, warmup_epochs: NonNegativeInt = 20, mid_channels: Optional[PositiveInt] = None,
                 levels: Tuple[PositiveInt, ...] = (4, 2, 1), **sides):
        super().__init__(**sides)
        self.warmup_epochs, self.mid_channels, self.levels = warmup_epochs, mid_channels, tuple(levels)
        self.warmup = 1.0  # a loop that never calls on_epoch_start gets the full weight

    def build(self, s, t):
        if len(s) != len(t) or len(s) < 2:
            raise ConfigError(f"reviewkd: needs the same number (≥ 2) of sides on each side, got {len(s)} student "
                              f"and {len(t)} teacher; tap as many layers on each side")
        s_shapes = [as_map(x).shape[1:] for x in s]
        t_shapes = [as_map(x).shape[1:] for x in t]
        self.chain = ReviewChain(s_shapes, t_shapes, self.mid_channels)

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        # mdistiller: min(epoch / WARMUP_EPOCHS, 1) with epochs counted from 1
        self.warmup = 1.0 if self.warmup_epochs == 0 else min((epoch + 1) / self.warmup_epochs, 1.0)

    def forward(self, s, t, batch):
        fused = self.chain([as_map(x) for x in s])
        hcl = hcl_loss(fused, [as_map(x) for x in t], self.levels)
        return {"loss": self.warmup * hcl, "hcl": hcl.detach()}
