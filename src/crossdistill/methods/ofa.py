"""OFA — Hao et al., NeurIPS 2023: exit branches project the student's stages into the logit space.

"One-for-All": there any teacher's logits are the target, with a target-class-enhanced loss.

Across architecture families the intermediate features differ in kind (a CNN's maps, a ViT's
tokens) and are not compared directly: each chosen student stage gets its own exit branch, built
for the stage's layout, that ends in the class logits, and every branch — and the student's own
logits — is trained with :func:`~crossdistill.losses.ofa_loss` against the teacher's logits::

    L = Σ_stages ofa(branch_i(f_i), z_t, y) + logit_weight · ofa(z_s, z_t, y)
    ofa(z, z_t, y) = mean_b Σ_k −((p_k + y_k)^ε − y_k) log softmax(z/T)_k,  p = softmax(z_t/T)

Sides: the student sides are the stages, then the student's logits last (default
``["@stages", "output"]``); the teacher side is its logits. Branches (official ``distillers/ofa.py``
of Hao840/OFAKD, rebuilt here; dropped after training):

- a map ``[B, C, H, W]`` (CNN stage, or a ViT's ``@token_map``): one depthwise-separable conv block per
  later tapped stage (stride 2, doubling the channels, the last one to ``width``), or a 1×1 conv to
  ``width`` for the last stage; then global average pooling and a linear layer to the classes;
- tokens ``[B, N, C]`` (ViT block outputs): ``max(later stages, 1)`` pre-norm transformer blocks of
  the stage's width, then the class token (the mean token when there is no prefix token), then a
  linear layer to the classes;
- a vector ``[B, D]``: a linear layer.

Defaults as the official code: ``ε = 1`` (its CIFAR-100 setting; ImageNet uses 1.5), ``T = 1``, weights
1 for the branches and for the logits, the task's CE at weight 1. Differences: ``width`` defaults to
the widest tapped student stage (the official uses ``max(student, teacher)`` final feature widths,
which needs a teacher feature tap); no patch merging before the token blocks (the official merges
224-px grids down to 7×7; small-image grids are already ≤ 8×8); one ``ε`` for all branches.
"""
from __future__ import annotations

from typing import ClassVar, List, Optional

import torch.nn as nn

from ..errors import ConfigError, ShapeError
from ..losses.cross_architecture import ofa_loss
from ..tokens import is_tokens, token_grid
from .base import TARGET, Method, NonNegative, Positive, PositiveInt, register_method


def separable_down(c_in: int, c_out: int) -> nn.Sequential:
    """Depthwise-separable conv block halving the resolution: (dw 3×3 stride 2, pw 1×1, BN, ReLU),
    then (dw 3×3, pw 1×1 to ``c_out``, BN, ReLU) — the official branch's downsampling block."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, 2, 1, groups=c_in, bias=False), nn.Conv2d(c_in, c_in, 1, bias=False),
        nn.BatchNorm2d(c_in), nn.ReLU(),
        nn.Conv2d(c_in, c_in, 3, 1, 1, groups=c_in, bias=False), nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out), nn.ReLU())


class FirstToken(nn.Module):
    """The first (class) token of ``[B, N, C]``, or the mean token when ``N`` has no prefix token."""

    def __init__(self, has_prefix: bool):
        super().__init__()
        self.has_prefix = has_prefix

    def forward(self, x):
        return x[:, 0] if self.has_prefix else x.mean(dim=1)


def _has_prefix(n: int) -> bool:
    """Whether ``n`` tokens start with class/distillation tokens (a square patch grid after them)."""
    try:
        return token_grid(n)[0] > 0
    except ShapeError:  # no square grid: treat every token alike
        return False


def exit_branch(shape, later: int, width: int, num_classes: int, heads: int) -> nn.Module:
    """The exit branch of one stage whose tensors have ``shape`` (batch excluded); ``later``: how
    many tapped stages come after it."""
    if len(shape) == 3:  # a map
        c = shape[0]
        if later == 0:
            blocks: List[nn.Module] = [nn.Conv2d(c, width, 1)]
        else:
            blocks = []
            for j in range(later):
                out = width if j == later - 1 else 2 * c
                blocks.append(separable_down(c, out))
                c = out
        return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
    if len(shape) == 2:  # tokens
        n, c = shape
        h = heads if c % heads == 0 else 1
        layers = [nn.TransformerEncoderLayer(c, h, 4 * c, dropout=0.0, activation="gelu", batch_first=True,
                                             norm_first=True) for _ in range(max(later, 1))]
        return nn.Sequential(*layers, FirstToken(_has_prefix(n)), nn.Linear(c, num_classes))
    return nn.Linear(shape[0], num_classes)


def _init(module: nn.Module) -> None:
    # the official branches' initialisation: He (fan-out) convs, unit BN, truncated-normal(0.02) linears
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@register_method("ofa")
class OFA(Method):
    paper: ClassVar[str] = ("Hao et al., NeurIPS 2023 — One-for-All: Bridge the Gap Between Heterogeneous "
                            "Architectures in Knowledge Distillation")
    year: ClassVar[int] = 2023
    kind: ClassVar[str] = "cross-architecture"
    default_weight = 1.0
    default_student = ("@stages", "output")
    default_teacher = "output"

    def __init__(self, eps: Positive = 1.0, T: Positive = 1.0, logit_weight: NonNegative = 1.0,
                 width: Optional[PositiveInt] = None, heads: PositiveInt = 4, **sides):
        """``eps``: the target-class exponent ε; ``logit_weight``: the weight of the student's own
        logits' term (the official ``kd_loss_weight``); ``width``: the conv branches' final width;
        ``heads``: attention heads of the token branches' blocks (1 when the width is not divisible)."""
        super().__init__(**sides)
        self.eps, self.T, self.logit_weight = eps, T, logit_weight
        self.width, self.heads = width, heads

    def build(self, s, t):
        if len(t) != 1 or t[0].dim() != 2 or s[-1].shape != t[0].shape or len(s) < 1:
            raise ConfigError(f"ofa: the last student side must be the student's logits ('output') and the teacher "
                              f"side the teacher's logits, [B, K] both; got student {[tuple(x.shape) for x in s]}, "
                              f"teacher {[tuple(x.shape) for x in t]}")
        stages = s[:-1]
        num_classes = t[0].shape[1]
        width = self.width or max((x.shape[-1] if is_tokens(x) else x.shape[1] for x in stages), default=1)
        self.branches = nn.ModuleList(
            exit_branch(x.shape[1:], len(stages) - 1 - i, width, num_classes, self.heads) for i, x in enumerate(stages))
        _init(self.branches)

    def forward(self, s, t, batch):
        target = batch.get(TARGET)
        if target is None or target.dim() != 1:
            raise ConfigError("ofa: needs class labels (batch['target'] of shape [B]): use it on a classification task")
        stage_terms = [ofa_loss(branch(f), t[0], target, self.eps, self.T) for branch, f in zip(self.branches, s[:-1])]
        logits_term = ofa_loss(s[-1], t[0], target, self.eps, self.T)
        stages = sum(stage_terms) if stage_terms else logits_term.new_zeros(())
        return {"loss": stages + self.logit_weight * logits_term, "stages": stages.detach(),
                "logits": logits_term.detach()}
