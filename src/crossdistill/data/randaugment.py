"""RandAugment on tensors: the strong augmentation of MLKD (and of FixMatch, where it comes from).

Why written here: the released code (Jin-Ying/Multi-Level-Logit-Distillation, and the same
``RandAugment(2, 10)`` in sunshangquan/logit-standardization-KD ``mdistiller/dataset/cifar100.py``)
runs PIL operations; torchvision's RandAugment is another operation list with fixed magnitudes, and
torchvision is broken here (docs/install.md); kornia has a RandAugment but was removed from the
project's dependencies for import time (docs/speed.md), and its operation list and magnitude ranges
differ too. So this file re-implements the reference's list on a ``[C, H, W]`` tensor, in a few lines
per operation.

As the reference: after crop + flip, ``n`` operations drawn with replacement from 14 (AutoContrast,
Brightness, Color, Contrast, Equalize, Identity, Posterize, Rotate, Sharpness, ShearX, ShearY,
Solarize, TranslateX, TranslateY), each with a magnitude uniform in its range (the ranges of the
reference's ``augment_list``, e.g. Rotate ±30°, Shear ±0.3, Translate ±0.3 of the side, Brightness /
Color / Contrast / Sharpness factors 0.05–0.95), then a Cutout square of side uniform in
[0, ½] of the image, filled with the grey (125, 123, 114)/255. Geometric operations sample the
nearest pixel and fill with black, as PIL's. The image is un-normalised to [0, 1] (``mean``/``std``)
for the operations and normalised again; only ``input`` changes, so this is for classification.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

Sample = Dict[str, Tensor]
CUTOUT_GREY = (125 / 255, 123 / 255, 114 / 255)


def _grey(img: Tensor) -> Tensor:
    if img.shape[0] != 3:
        return img.mean(0, keepdim=True)
    return (img * torch.tensor([0.299, 0.587, 0.114], dtype=img.dtype).view(3, 1, 1)).sum(0, keepdim=True)


def _blend(degenerate: Tensor, img: Tensor, factor: float) -> Tensor:
    return (degenerate + (img - degenerate) * factor).clamp(0, 1)


def _affine(img: Tensor, matrix: Tuple[float, float, float, float, float, float]) -> Tensor:
    """Output pixel ``(x, y)`` (pixel units, centres at +½) reads input ``(a·x + b·y + c, d·x + e·y + f)``:
    PIL's ``Image.transform(AFFINE)`` convention; nearest pixel, black outside."""
    c, h, w = img.shape
    a, b, cc, d, e, f = matrix
    ys, xs = torch.meshgrid(torch.arange(h, dtype=img.dtype) + 0.5, torch.arange(w, dtype=img.dtype) + 0.5, indexing="ij")
    sx, sy = a * xs + b * ys + cc, d * xs + e * ys + f
    grid = torch.stack([2 * sx / w - 1, 2 * sy / h - 1], dim=-1)[None]
    return F.grid_sample(img[None], grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]


def auto_contrast(img: Tensor, _: float) -> Tensor:
    lo, hi = img.amin(dim=(1, 2), keepdim=True), img.amax(dim=(1, 2), keepdim=True)
    scale = torch.where(hi > lo, 1.0 / (hi - lo).clamp_min(1e-12), torch.ones_like(hi))
    return torch.where(hi > lo, (img - lo) * scale, img)


def equalize(img: Tensor, _: float) -> Tensor:
    """PIL's per-channel histogram equalisation on 256 levels."""
    q = (img * 255).round().clamp(0, 255).long()
    out = []
    for ch in q:
        hist = torch.bincount(ch.flatten(), minlength=256)
        nonzero = hist.nonzero()
        step = (int(hist.sum()) - int(hist[nonzero[-1]])) // 255 if len(nonzero) else 0
        if step == 0:
            out.append(ch.to(img.dtype) / 255)
            continue
        lut = ((torch.cumsum(hist, 0) - hist + step // 2) // step).clamp(max=255)
        out.append(lut[ch].to(img.dtype) / 255)
    return torch.stack(out)


def posterize(img: Tensor, v: float) -> Tensor:
    bits = max(1, int(v))
    q = (img * 255).round().clamp(0, 255).long()
    return (q & ~(2 ** (8 - bits) - 1)).to(img.dtype) / 255


def rotate(img: Tensor, degrees: float) -> Tensor:
    _, h, w = img.shape
    t = math.radians(degrees)
    cx, cy = w / 2, h / 2
    cos, sin = math.cos(t), math.sin(t)
    # inverse map of a counter-clockwise rotation about the centre (y pointing down)
    return _affine(img, (cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy))


def sharpness(img: Tensor, v: float) -> Tensor:
    """Blend with PIL's SMOOTH filter (3×3, centre 5, others 1, /13); the border pixels stay."""
    kernel = torch.ones(3, 3, dtype=img.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13).expand(img.shape[0], 1, 3, 3)
    smooth = img.clone()
    smooth[:, 1:-1, 1:-1] = F.conv2d(img[None], kernel, groups=img.shape[0])[0]
    return _blend(smooth, img, v)


def solarize(img: Tensor, threshold: float) -> Tensor:
    return torch.where(img * 255 >= threshold, 1 - img, img)


#: (operation, low, high): the reference's ``augment_list``
OPERATIONS: List[Tuple[Callable[[Tensor, float], Tensor], float, float]] = [
    (auto_contrast, 0, 1),
    (lambda x, v: (x * v).clamp(0, 1), 0.05, 0.95),                       # Brightness
    (lambda x, v: _blend(_grey(x), x, v), 0.05, 0.95),                     # Color
    (lambda x, v: _blend(_grey(x).mean(), x, v), 0.05, 0.95),              # Contrast
    (equalize, 0, 1),
    (lambda x, v: x, 0, 1),                                                # Identity
    (posterize, 4, 8),
    (rotate, -30, 30),
    (sharpness, 0.05, 0.95),
    (lambda x, v: _affine(x, (1, v, 0, 0, 1, 0)), -0.3, 0.3),              # ShearX
    (lambda x, v: _affine(x, (1, 0, 0, v, 1, 0)), -0.3, 0.3),              # ShearY
    (solarize, 0, 256),
    (lambda x, v: _affine(x, (1, 0, v * x.shape[2], 0, 1, 0)), -0.3, 0.3),  # TranslateX
    (lambda x, v: _affine(x, (1, 0, 0, 0, 1, v * x.shape[1])), -0.3, 0.3),  # TranslateY
]


def cutout(img: Tensor, fraction: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """A square of side ``fraction·W`` at a uniformly drawn position, filled with the reference's grey."""
    _, h, w = img.shape
    side = fraction * w
    if side <= 0:
        return img
    x0 = float(torch.rand((), generator=generator)) * w
    y0 = float(torch.rand((), generator=generator)) * h
    x0, y0 = int(max(0, x0 - side / 2)), int(max(0, y0 - side / 2))
    x1, y1 = int(min(w, x0 + side)), int(min(h, y0 + side))
    out = img.clone()
    grey = torch.tensor(CUTOUT_GREY[: img.shape[0]] if img.shape[0] == 3 else [sum(CUTOUT_GREY) / 3], dtype=img.dtype)
    out[:, y0:y1 + 1, x0:x1 + 1] = grey.view(-1, 1, 1)  # PIL's rectangle includes its last row and column
    return out


class RandAugment:
    """``n`` random operations of :data:`OPERATIONS` with uniform magnitudes, then Cutout (see the module
    docstring). Works on a normalised ``input`` (``mean``/``std`` per channel)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], n: int = 2,
                 generator: Optional[torch.Generator] = None):
        c = len(mean) or 1
        self.mean = torch.tensor(list(mean) or [0.0], dtype=torch.float32).view(-1, 1, 1).expand(c, 1, 1)
        self.std = torch.tensor(list(std) or [1.0], dtype=torch.float32).view(-1, 1, 1).expand(c, 1, 1)
        self.n = int(n)
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        x = sample["input"]
        mean, std = self.mean.to(x), self.std.to(x)
        img = (x * std + mean).clamp(0, 1)
        for i in torch.randint(len(OPERATIONS), (self.n,), generator=self.generator).tolist():
            op, low, high = OPERATIONS[i]
            img = op(img, low + (high - low) * float(torch.rand((), generator=self.generator)))
        img = cutout(img, 0.5 * float(torch.rand((), generator=self.generator)), self.generator)
        out = dict(sample)
        out["input"] = (img - mean) / std
        return out

    def __repr__(self) -> str:
        return f"RandAugment(n={self.n}, operations={len(OPERATIONS)}, cutout≤½)"
