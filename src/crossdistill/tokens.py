"""Token tensors ``[B, N, C]`` and feature maps ``[B, C, H, W]``: the reshapes that let a vision
transformer's tokens meet a CNN's map.

Convention used across the project: a tapped tensor with **3 dims is a token tensor** ``[B, N, C]``
(channels last, as a transformer block returns them), 4 dims a map ``[B, C, H, W]``, 2 dims a vector.
The ``N`` tokens are the prefix tokens (class, DeiT's distillation token, register tokens — at the
front, timm's layout) followed by the patch tokens of a row-major ``H×W`` patch grid.

- :func:`tokens_to_map`: the patch tokens as a map (prefix tokens dropped). The grid is inferred as
  the largest square that fits in ``N`` (so ``N = prefix + s²`` with at most :data:`MAX_PREFIX`
  prefix tokens); a non-square grid cannot be inferred — tap the model's ``@token_map`` instead,
  which knows its grid.
- :func:`map_to_tokens`: a map flattened row-major to ``[B, H·W, C]`` (no prefix tokens).

Only reshapes live here (no learned part, no resizing): :mod:`crossdistill.projectors` applies them
as its generic layout step, and the feature losses that need a map (AT, NST) apply :func:`as_map`.
"""
from __future__ import annotations

import math
from typing import Tuple

from torch import Tensor

from .errors import ShapeError

#: the most prefix tokens a square patch grid is inferred under (class, distillation, registers);
#: a model with more taps its ``@token_map`` (``token_map_layer``), whose grid is exact
MAX_PREFIX = 5


def is_tokens(x: Tensor) -> bool:
    """A ``[B, N, C]`` token tensor (the project's convention for 3-dim tensors)."""
    return x.dim() == 3


def channel_dim(x: Tensor) -> int:
    """The feature (channel) axis: last for tokens, 1 for vectors and maps."""
    return -1 if is_tokens(x) else 1


def token_grid(n: int) -> Tuple[int, int]:
    """``(prefix, side)`` for ``n`` tokens: ``n = prefix + side²`` with ``side`` the largest square root."""
    side = math.isqrt(n)
    prefix = n - side * side
    if side == 0 or prefix > MAX_PREFIX:
        raise ShapeError(f"cannot lay {n} tokens on a square patch grid (at most {MAX_PREFIX} class/distillation "
                         "tokens before a square number of patches); tap the model's '@token_map', which knows "
                         "its grid, or a layer that returns a map")
    return prefix, side


def patch_tokens(x: Tensor) -> Tensor:
    """The patch tokens of ``[B, N, C]`` (inferred prefix tokens dropped): ``[B, side², C]``."""
    prefix, _ = token_grid(x.shape[1])
    return x[:, prefix:]


def tokens_to_map(x: Tensor) -> Tensor:
    """``[B, N, C]`` → ``[B, C, side, side]``: the patch tokens on their (inferred, square) grid."""
    if not is_tokens(x):
        raise ShapeError(f"tokens_to_map needs [B, N, C] tokens, got {tuple(x.shape)}")
    prefix, side = token_grid(x.shape[1])
    return x[:, prefix:].transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)


def map_to_tokens(x: Tensor) -> Tensor:
    """``[B, C, H, W]`` → ``[B, H·W, C]`` (row-major, the order :func:`tokens_to_map` reads back)."""
    if x.dim() != 4:
        raise ShapeError(f"map_to_tokens needs a [B, C, H, W] map, got {tuple(x.shape)}")
    return x.flatten(2).transpose(1, 2)


def as_map(x: Tensor) -> Tensor:
    """A map as it is; tokens as :func:`tokens_to_map`; anything else unchanged (the caller checks)."""
    return tokens_to_map(x) if is_tokens(x) else x
