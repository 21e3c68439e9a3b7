"""Per-sample augmentation on tensors (no PIL, no torchvision).

Every transform takes a sample dict and returns a new one. Geometric transforms move the **dense
fields together with the image**: any tensor in the sample whose last two dimensions equal those of
``"input"`` (``mask``, ``depth``, ``translation``, ...) gets the same crop / flip / resize. Fill
values for padded areas: ``mask`` 255 (ignore), ``depth`` 0 (invalid), everything else 0 (for the
normalised ``input`` that is the dataset mean). Resizing uses bilinear interpolation for images and
nearest for ``mask`` (labels must not blend) and for ``depth`` (blending would mix the invalid 0
into valid depths and average across occlusion edges, inventing surfaces that are not there).

Randomness comes from ``generator`` when one is given, else from the global torch RNG, so
``torch.manual_seed`` makes a pipeline deterministic. With DataLoader workers leave ``generator``
unset: each worker gets a copy of the transform, and a shared generator would give every worker
the same random stream, whereas the global RNG is seeded per worker by the DataLoader.

The datasets already return a normalised ``input`` (``info.mean``/``info.std``), so the eval
transform is the identity and :class:`Normalize` is only for datasets built outside this package.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .registry import DatasetInfo

Sample = Dict[str, Tensor]
Size = Union[int, Tuple[int, int]]

PAD_VALUES = {"mask": 255, "depth": 0.0}
NEAREST_FIELDS = {"mask", "depth"}


def _pair(size: Size) -> Tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _dense_keys(sample: Sample) -> list[str]:
    """Fields that share the image's spatial grid (moved together with ``input``)."""
    hw = sample["input"].shape[-2:]
    return [
        k for k, v in sample.items()
        if isinstance(v, Tensor) and v.dim() >= 2 and v.shape[-2:] == hw
    ]


def _randint(low: int, high: int, generator: Optional[torch.Generator]) -> int:
    """Uniform int in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def _uniform(low: float, high: float, generator: Optional[torch.Generator]) -> float:
    return float(low + (high - low) * torch.rand((), generator=generator).item())


def _resize(key: str, x: Tensor, size: Tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    squeeze = x.dim() == 2
    y = x[None, None] if squeeze else x[None]
    dtype = y.dtype
    if key in NEAREST_FIELDS or not dtype.is_floating_point:
        y = F.interpolate(y.float(), size=size, mode="nearest")
    else:
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False, antialias=True)
    y = y.to(dtype)
    return y[0, 0] if squeeze else y[0]


class Compose:
    def __init__(self, transforms: Iterable[Callable[[Sample], Sample]]):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomCropPad:
    """Pad every dense field by ``padding`` on each side, then take a random ``size`` crop."""

    def __init__(self, size: Size, padding: int = 4, generator: Optional[torch.Generator] = None):
        self.size = _pair(size)
        self.padding = int(padding)
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        h, w = sample["input"].shape[-2:]
        th, tw = self.size
        p = self.padding
        # extra padding when the crop is larger than the padded image
        ph, pw = max(p, math.ceil((th - h) / 2)), max(p, math.ceil((tw - w) / 2))
        i = _randint(0, h + 2 * ph - th, self.generator)
        j = _randint(0, w + 2 * pw - tw, self.generator)
        for k in _dense_keys(sample):
            x = sample[k]
            fill = PAD_VALUES.get(k, 0 if x.dtype.is_floating_point else 255)
            if ph or pw:
                x = F.pad(x, (pw, pw, ph, ph), value=fill)
            out[k] = x[..., i:i + th, j:j + tw]
        return out

    def __repr__(self) -> str:
        return f"RandomCropPad(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5, generator: Optional[torch.Generator] = None):
        self.p = float(p)
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        if torch.rand((), generator=self.generator).item() >= self.p:
            return sample
        out = dict(sample)
        for k in _dense_keys(sample):
            out[k] = sample[k].flip(-1)
        return out

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomResizedCrop:
    """Crop a random area fraction in ``scale`` and aspect ratio in ``ratio``, resize to ``size``.

    Same sampling rule as the common ImageNet recipe: 10 tries, then a centre crop.
    """

    def __init__(
        self,
        size: Size,
        scale: Tuple[float, float] = (0.2, 1.0),
        ratio: Tuple[float, float] = (3 / 4, 4 / 3),
        generator: Optional[torch.Generator] = None,
    ):
        self.size = _pair(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.generator = generator

    def _box(self, h: int, w: int) -> Tuple[int, int, int, int]:
        area = h * w
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * _uniform(*self.scale, self.generator)
            aspect = math.exp(_uniform(*log_r, self.generator))
            cw = int(round(math.sqrt(target * aspect)))
            ch = int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                return _randint(0, h - ch, self.generator), _randint(0, w - cw, self.generator), ch, cw
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            cw, ch = w, int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            ch, cw = h, int(round(h * self.ratio[1]))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        h, w = sample["input"].shape[-2:]
        i, j, ch, cw = self._box(h, w)
        for k in _dense_keys(sample):
            out[k] = _resize(k, sample[k][..., i:i + ch, j:j + cw], self.size)
        return out

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class Normalize:
    """``input ← (input − mean) / std`` per channel; other fields untouched."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        out["input"] = (sample["input"] - self.mean) / self.std
        return out

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


class RandomIntensityJitter:
    """SimCLR-style photometric jitter on a normalised image (its ``mean``/``std`` undo and redo the
    normalisation, so it works in [0, 1] pixel space).

    With probability ``p``: brightness ``x·b``, contrast ``(x − m)·c + m`` (``m`` the image's mean
    grey level) and, for 3 channels, saturation ``g + (x − g)·s`` (``g`` the pixel's grey level), with
    ``b, c, s`` uniform in ``[1 − strength, 1 + strength]``, in that fixed order, each clamped to
    [0, 1]. Then, for 3 channels, grey with probability ``grayscale_p``. Only ``input`` changes.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], brightness: float = 0.4, contrast: float = 0.4,
                 saturation: float = 0.4, p: float = 0.8, grayscale_p: float = 0.2,
                 generator: Optional[torch.Generator] = None):
        c = len(mean) or 1
        self.mean = torch.tensor(list(mean) or [0.0], dtype=torch.float32).view(-1, 1, 1).expand(c, 1, 1)
        self.std = torch.tensor(list(std) or [1.0], dtype=torch.float32).view(-1, 1, 1).expand(c, 1, 1)
        self.brightness, self.contrast, self.saturation = float(brightness), float(contrast), float(saturation)
        self.p, self.grayscale_p = float(p), float(grayscale_p)
        self.generator = generator

    def _factor(self, strength: float) -> float:
        return _uniform(max(0.0, 1 - strength), 1 + strength, self.generator)

    def __call__(self, sample: Sample) -> Sample:
        x = sample["input"]
        jitter = torch.rand((), generator=self.generator).item() < self.p
        grey = x.shape[0] == 3 and torch.rand((), generator=self.generator).item() < self.grayscale_p
        if not (jitter or grey):
            return sample
        mean, std = self.mean.to(x), self.std.to(x)
        img = (x * std + mean).clamp(0, 1)
        luma = (lambda y: (y * torch.tensor([0.299, 0.587, 0.114]).to(y).view(3, 1, 1)).sum(0, keepdim=True)) \
            if x.shape[0] == 3 else (lambda y: y.mean(0, keepdim=True))
        if jitter:
            img = (img * self._factor(self.brightness)).clamp(0, 1)
            m = luma(img).mean()
            img = ((img - m) * self._factor(self.contrast) + m).clamp(0, 1)
            if x.shape[0] == 3:
                g = luma(img)
                img = (g + (img - g) * self._factor(self.saturation)).clamp(0, 1)
        if grey:
            img = luma(img).expand_as(img)
        out = dict(sample)
        out["input"] = (img - mean) / std
        return out

    def __repr__(self) -> str:
        return (f"RandomIntensityJitter(brightness={self.brightness}, contrast={self.contrast}, "
                f"saturation={self.saturation}, p={self.p}, grayscale_p={self.grayscale_p})")


TRAIN_TRANSFORM_KINDS = ("crop_flip", "resized_crop_flip", "ssl", "imagenet", "none")


def build_train_transform(
    info: DatasetInfo, kind: str = "crop_flip", generator: Optional[torch.Generator] = None
) -> Compose:
    """The usual training augmentation for a dataset.

    - ``crop_flip``: pad by 1/8 of the side (4 px at 32×32) + random crop + horizontal flip
      (the CIFAR recipe)
    - ``resized_crop_flip``: random resized crop, scale 0.2–1, + flip (SimReg's weak augmentation)
    - ``ssl``: ``resized_crop_flip`` + SimCLR's photometric jitter (brightness/contrast 0.4, and for
      RGB saturation 0.4 and grey with p = 0.2; jitter with p = 0.8) — strong enough for a
      self-supervised objective on two views; hue and blur are left out
    - ``imagenet``: the standard ImageNet crop, random resized crop at scale 0.08–1, + flip
      (with the image folder's ``pipeline: imagenet``, from the original image: data/imagenet.py)
    - ``none``: identity
    """
    size = tuple(info.image_size)
    if kind == "crop_flip":
        padding = max(1, round(min(size) / 8))
        return Compose([
            RandomCropPad(size, padding, generator=generator),
            RandomHorizontalFlip(0.5, generator=generator),
        ])
    if kind == "resized_crop_flip":
        return Compose([
            RandomResizedCrop(size, scale=(0.2, 1.0), generator=generator),
            RandomHorizontalFlip(0.5, generator=generator),
        ])
    if kind == "ssl":
        return Compose([
            RandomResizedCrop(size, scale=(0.2, 1.0), generator=generator),
            RandomHorizontalFlip(0.5, generator=generator),
            RandomIntensityJitter(info.mean, info.std, generator=generator),
        ])
    if kind == "imagenet":
        return Compose([
            RandomResizedCrop(size, scale=(0.08, 1.0), generator=generator),
            RandomHorizontalFlip(0.5, generator=generator),
        ])
    if kind == "none":
        return Compose([])
    raise ConfigError(
        f"unknown train transform '{kind}'; valid choices: {', '.join(TRAIN_TRANSFORM_KINDS)}"
    )


def build_eval_transform(info: DatasetInfo) -> Compose:
    """Identity for inputs at ``info.image_size`` (every dataset but the image folder's ``pipeline:
    imagenet``, whose images are resized and centre-cropped here: data/imagenet.py)."""
    from .imagenet import ResizeCenterCrop

    return Compose([ResizeCenterCrop(tuple(info.image_size))])
