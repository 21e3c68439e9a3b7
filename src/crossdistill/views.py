"""Per-network input views, for cross-modal transfer (teacher and student see different views).

Each view maps a batch of RGB images ``[B, 3, H, W]`` to the network's input. They are linear
colour transforms (ITU-R BT.601 luma/chroma), so they apply equally to normalised tensors.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import Tensor

from .errors import ShapeError

_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def _ycbcr(x: Tensor) -> Tensor:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ShapeError(f"colour views need RGB input [B, 3, H, W], got {tuple(x.shape)}")
    return torch.einsum("oc,bchw->bohw", _YCBCR.to(x), x)


def luminance(x: Tensor) -> Tensor:
    """Y channel only: ``[B, 1, H, W]``."""
    return _ycbcr(x)[:, :1]


def chroma(x: Tensor) -> Tensor:
    """Cb, Cr channels: ``[B, 2, H, W]`` — no brightness information."""
    return _ycbcr(x)[:, 1:]


def grayscale3(x: Tensor) -> Tensor:
    """Luminance repeated to 3 channels, for an RGB network fed a grey view."""
    return luminance(x).expand(-1, 3, -1, -1)


VIEWS: Dict[str, Callable[[Tensor], Tensor]] = {"luminance": luminance, "chroma": chroma, "grayscale3": grayscale3}
VIEW_CHANNELS = {"identity": None, "luminance": 1, "chroma": 2, "grayscale3": 3}
