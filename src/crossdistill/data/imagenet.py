"""The standard ImageNet input pipeline (the one the published ImageNet numbers were trained with).

- Training: a random resized crop **of the original image** (area fraction in the recipe's scale range —
  0.08–1 for ``augment: imagenet``, 0.2–1 for ``resized_crop_flip`` — aspect ratio log-uniform in
  3/4–4/3, 10 tries then a centre crop: :class:`~crossdistill.data.transforms.RandomResizedCrop`,
  torchvision's documented algorithm), resized to ``image_size``, and a horizontal flip. No colour
  jitter: neither the ResNet recipe (He et al. 2016, as in PyTorch's reference script) nor the
  distillation papers' ImageNet runs (DPK, SimReg's weak view) use it.
- Evaluation: the shorter side resized to ``image_size / 0.875`` (256 for 224), then a centre crop.

The image folder (``options: {pipeline: imagenet}``) returns each image at its own size; the
transforms above make it ``image_size``. Decoding is the costly part, so a JPEG is decoded at a
reduced resolution (libjpeg's DCT scaling, ``PIL.Image.draft``, ½, ¼ or ⅛) whenever even the
smallest crop the training scale allows (area 0.08, aspect ratio 4/3), or the evaluation resize,
still has at least ``image_size`` pixels on each side — the result is what a full decode
followed by the same resize would give, at a fraction of the time for large photos. Use
``data.num_workers`` ≈ the CPU cores available per GPU (8 in the recipes) so that decoding keeps up.

Why no image library: torchvision (whose ``transforms.v2`` is the usual choice) is broken beside the
pinned CPU torch (docs/ENVIRONMENT facts). albumentations 2.0 does install beside it (with
opencv-python-headless, checked with ``pip install --dry-run``), but draws from its own NumPy random
state: the crop and flip must come from the per-sample ``(seed, epoch, index)`` torch RNG that makes
resume bit-identical and the teacher cache's views replayable (data/seeded.py), and it would add
OpenCV for two operations. kornia works too but augments batches of equal-size tensors — it cannot
crop each original image before batching — and was dropped for speed (docs/speed.md). So Pillow
decodes (already a dependency, with libjpeg-turbo's DCT scaling through ``draft``), and the crop and
resize are torch's antialiased bilinear interpolation, tested against the documented algorithm.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

#: The centre-crop fraction of the evaluation resize (224 of 256).
EVAL_CROP_FRACTION = 0.875
#: The smallest training crop (area fraction, widest aspect ratio) decoding must keep sharp.
MIN_TRAIN_SCALE, MAX_TRAIN_RATIO = 0.08, 4 / 3
#: Augment kinds that crop every sample to ``image_size`` (so images of any size can be batched).
SIZING_AUGMENTS = ("imagenet", "resized_crop_flip", "ssl")


def eval_resize(size: Tuple[int, int]) -> int:
    """The shorter side before the evaluation centre crop: 256 for 224."""
    return int(math.floor(min(size) / EVAL_CROP_FRACTION + 0.5))


def draft_size(width: int, height: int, size: Tuple[int, int], split: str) -> Tuple[int, int]:
    """The smallest ``(w, h)`` a JPEG may be decoded at (``Image.draft`` keeps at least this) so that
    the crop that follows still has ``size`` pixels or more on each side."""
    if split == "train":
        # the smallest crop: area fraction MIN_TRAIN_SCALE at the widest aspect ratio; its shorter
        # side is sqrt(scale · W · H / ratio) and must stay ≥ max(size) after the reduction
        shorter = math.sqrt(MIN_TRAIN_SCALE * width * height / MAX_TRAIN_RATIO)
        factor = max(1.0, shorter / max(size))
    else:
        factor = max(1.0, min(width, height) / eval_resize(size))
    return int(math.ceil(width / factor)), int(math.ceil(height / factor))


class ResizeCenterCrop:
    """Evaluation geometry: shorter side to ``image_size / 0.875``, centre crop ``image_size``. An
    input already of ``image_size`` is returned as it is, so datasets that give fixed-size images
    (every built-in one) are untouched."""

    def __init__(self, size: Tuple[int, int]):
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, sample):
        x = sample["input"]
        h, w = x.shape[-2:]
        if (h, w) == self.size or any(k != "input" and isinstance(v, Tensor) and v.dim() >= 2 and v.shape[-2:] == (h, w)
                                      for k, v in sample.items()):
            return sample  # at its size already, or a dense sample (mask, depth) this classification step must not split
        short = eval_resize(self.size)
        scale = short / min(h, w)
        nh, nw = max(self.size[0], int(round(h * scale))), max(self.size[1], int(round(w * scale)))
        y = F.interpolate(x[None].float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
        top, left = (nh - self.size[0]) // 2, (nw - self.size[1]) // 2
        out = dict(sample)
        out["input"] = y[:, top:top + self.size[0], left:left + self.size[1]].to(x.dtype).contiguous()
        return out

    def __repr__(self) -> str:
        return f"ResizeCenterCrop(size={self.size}, resize={eval_resize(self.size)})"


def check_batchable(dataset, augment: str) -> None:
    """A dataset of images of different sizes needs an augmentation that crops each to one size."""
    if getattr(dataset, "variable_size", False) and augment not in SIZING_AUGMENTS:
        raise ConfigError(f"data.augment={augment} keeps each image's own size, but the images of "
                          "pipeline: imagenet differ in size; use data.augment: imagenet (scale 0.08-1) or "
                          "resized_crop_flip (scale 0.2-1)")

