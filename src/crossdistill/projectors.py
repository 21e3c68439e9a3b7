"""How the two spaces meet.

A projector is a small trainable module that is used only during distillation and dropped
afterwards. Its *direction* is the choice that Learning to Project is about:

- ``standard``: student → teacher space; the loss compares ``P(z_s)`` with ``z_t``.
- ``inverted``: teacher → student space; the loss compares ``z_s`` with ``P(z_t)``. Sitting on the
  teacher side, ``P`` can learn to drop teacher directions that do not help the student.
- ``identity``: no projector (shapes must already agree).

Vectors ``[B, D]`` are joined with a linear layer, feature maps ``[B, C, H, W]`` with a 1×1 conv
(optionally conv-BN, as FitNet's regressor), and the projected map is resized to the *student's*
spatial size in both directions. Shapes come from one dry-run forward (see ``Distiller``).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError, ShapeError

DIRECTIONS = ("standard", "inverted", "identity")


def match_spatial(x: Tensor, size: Tuple[int, ...]) -> Tensor:
    """Resize a feature map to ``size`` (bilinear; area when shrinking); vectors pass through."""
    if x.dim() != 4 or tuple(x.shape[-2:]) == tuple(size):
        return x
    mode = "area" if x.shape[-2] >= size[0] and x.shape[-1] >= size[1] else "bilinear"
    x = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x  # resized values are loss inputs: float32
    return F.interpolate(x, size=size, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))


def pool_to_vector(x: Tensor) -> Tensor:
    """A feature map ``[B, C, H, W]`` becomes ``[B, C]`` (global average); vectors pass through."""
    return x.mean(dim=(2, 3)) if x.dim() == 4 else x.flatten(1)


def linear_map(in_shape: torch.Size, out_shape: torch.Size, kind: str = "linear") -> nn.Module:
    """A learned map from features shaped ``in_shape`` to ``out_shape`` (batch dim excluded)."""
    if len(in_shape) == 1 and len(out_shape) == 1:
        return nn.Linear(in_shape[0], out_shape[0], bias=False)
    if len(in_shape) == 3 and len(out_shape) == 3:
        conv = nn.Conv2d(in_shape[0], out_shape[0], kernel_size=1, bias=False)
        if kind == "conv_bn":
            return nn.Sequential(conv, nn.BatchNorm2d(out_shape[0]))
        return conv
    raise ShapeError(
        f"no projector joins a feature of shape {tuple(in_shape)} to one of shape {tuple(out_shape)}: "
        "tap layers that are both vectors or both feature maps"
    )


class Projector(nn.Module):
    """Maps one side into the other's space; ``forward(z_s, z_t) -> (z_s', z_t')``.

    After the call both tensors have the same shape: the compared pair.
    """

    def __init__(self, student_shape: torch.Size, teacher_shape: torch.Size, direction: str = "standard", kind: str = "linear"):
        super().__init__()
        if direction not in DIRECTIONS:
            raise ConfigError(f"unknown projector '{direction}': valid choices: {', '.join(DIRECTIONS)}")
        self.direction = direction
        s, t = torch.Size(student_shape), torch.Size(teacher_shape)
        if direction == "identity":
            self.map = nn.Identity()
            if s[:1] != t[:1] or len(s) != len(t):
                raise ShapeError(
                    f"student feature {tuple(s)} and teacher feature {tuple(t)} differ and the projector is "
                    "'identity': use projector=standard or projector=inverted"
                )
        elif direction == "standard":
            self.map = linear_map(s, t, kind)
        else:
            self.map = linear_map(t, s, kind)

    def forward(self, z_s: Tensor, z_t: Tensor) -> Tuple[Tensor, Tensor]:
        if self.direction == "standard":
            z_s = self.map(z_s)
        elif self.direction == "inverted":
            z_t = self.map(z_t)
        size = z_s.shape[-2:] if z_s.dim() == 4 else None
        if size is not None:
            z_t = match_spatial(z_t, size)
        return z_s, z_t


class MLPHead(nn.Module):
    """A deep MLP head (SimReg / BYOL / SimCLR style): widths ``hidden`` then ``out``; Linear+BN+ReLU
    between layers, none after the last. Dropped after training.

    ``plain``: indices of hidden layers that get no BN+ReLU (a biased Linear alone) — SimReg's
    released code leaves layer 1 (the second) of its 4-layer head bare. ``input_norm``: a
    BatchNorm1d on the input first — the released code's "linear" head is BN + Linear.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, plain: Sequence[int] = (),
                 input_norm: bool = False):
        super().__init__()
        dims = (int(in_dim), *(int(h) for h in hidden))
        bad = [i for i in plain if not 0 <= i < len(dims) - 1]
        if bad:
            raise ConfigError(f"MLPHead: plain layer index {bad[0]} is not one of the {len(dims) - 1} hidden layer(s)")
        layers: list[nn.Module] = [nn.BatchNorm1d(dims[0])] if input_norm else []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            if i in plain:
                layers.append(nn.Linear(a, b))
            else:
                layers += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-1], int(out_dim)))
        self.net = nn.Sequential(*layers)

    @property
    def widths(self) -> Tuple[int, ...]:
        """Input width, then the output width of every Linear: ``(in, *hidden, out)``."""
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        return (linears[0].in_features, *(m.out_features for m in linears))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(pool_to_vector(x))
