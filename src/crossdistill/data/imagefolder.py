"""``"imagefolder"``: images in ``ROOT/SPLIT/CLASS_NAME/*.png|jpg|jpeg|bmp|webp``.

- Class names are the sorted sub-folder names of ``ROOT/train`` when it exists (so every split
  numbers the classes the same way, even if a test split lacks a class), else of ``ROOT/SPLIT``.
- ``split="test"`` falls back to ``ROOT/val`` when ``ROOT/test`` does not exist (ImageNet's layout),
  and ``"val"`` to ``ROOT/test``.
- Images are decoded lazily with PIL in ``__getitem__`` (only the file list is kept in memory),
  converted to RGB (or L with ``in_channels=1``) and resized to ``image_size`` (default 32; an int
  or ``(H, W)``; the aspect ratio is not kept — crop your images first if it matters).
- ``pipeline: imagenet`` instead returns every image at its own size (a JPEG decoded at a reduced
  resolution where the crop allows it), for the standard ImageNet pipeline (``data/imagenet.py``):
  ``augment: imagenet`` or ``resized_crop_flip`` crops training images from the original, and
  evaluation resizes the shorter side to ``image_size / 0.875`` and takes the centre crop.
- Normalisation defaults to the ImageNet mean/std (grey: their luma-weighted mean); override with
  ``mean``/``std``.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .registry import DatasetInfo, register_dataset
from .wrappers import Sample, as_size, check_split, optional_subset, resolve_options

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GREY_MEAN, GREY_STD = (0.449,), (0.226,)

DEFAULTS = dict(image_size=32, in_channels=3, mean=None, std=None, subset=None, pipeline="resize")
PIPELINES = ("resize", "imagenet")
_SPLIT_FALLBACK = {"test": "val", "val": "test"}


def _class_dirs(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> List[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )


class ImageFolderDataset(torch.utils.data.Dataset):
    def __init__(self, split: str = "train", root: Optional[str] = None, **options):
        o = resolve_options("imagefolder", options, DEFAULTS)
        check_split("imagefolder", split, ("train", "val", "test"))
        size = as_size(o["image_size"], "imagefolder")
        channels = o["in_channels"]
        if channels not in (1, 3):
            raise ConfigError(f"dataset 'imagefolder': option in_channels={channels!r} must be 1 or 3")
        subset = optional_subset(o["subset"], "imagefolder")
        if o["pipeline"] not in PIPELINES:
            raise ConfigError(f"dataset 'imagefolder': option pipeline={o['pipeline']!r} must be one of "
                              f"{', '.join(PIPELINES)}")
        self.variable_size = o["pipeline"] == "imagenet"  # each image at its own size (data/imagenet.py)
        if root is None:
            raise DataError(
                "imagefolder needs root=DIR with images in DIR/train/CLASS_NAME/*.png (and DIR/test/...); "
                "pass the root option"
            )
        base = Path(root).expanduser()
        folder = base / split
        if not folder.is_dir() and split in _SPLIT_FALLBACK and (base / _SPLIT_FALLBACK[split]).is_dir():
            folder = base / _SPLIT_FALLBACK[split]
        if not folder.is_dir():
            raise DataError(
                f"imagefolder: no folder {folder} (expected {base}/{split}/CLASS_NAME/*.png|jpg); "
                "create it or point root at the folder that contains the split folders"
            )
        train_dir = base / "train"
        classes = _class_dirs(train_dir if train_dir.is_dir() else folder)
        extra = sorted(set(_class_dirs(folder)) - set(classes))
        if extra:
            raise DataError(
                f"imagefolder: {folder} has class folders {extra} that {train_dir} lacks; "
                "every split must use the training split's class names"
            )
        files: List[Tuple[Path, int]] = []
        for label, name in enumerate(classes):
            if (folder / name).is_dir():
                files += [(p, label) for p in _images_in(folder / name)]
        if not files:
            raise DataError(
                f"imagefolder: no images ({'|'.join(EXTENSIONS)}) in class folders under {folder}; "
                f"put them in {folder}/CLASS_NAME/"
            )
        if subset is not None:
            files = files[:subset]
        mean = o["mean"] if o["mean"] is not None else (IMAGENET_MEAN if channels == 3 else GREY_MEAN)
        std = o["std"] if o["std"] is not None else (IMAGENET_STD if channels == 3 else GREY_STD)
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(f"dataset 'imagefolder': mean and std need {channels} values each")
        self.info = DatasetInfo(
            num_classes=len(classes), in_channels=channels, image_size=size, fields=("input", "label"),
            mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
        )
        self.classes = tuple(classes)
        self.files = [p for p, _ in files]
        self.labels = torch.tensor([lab for _, lab in files], dtype=torch.long)
        self.root, self.split = folder, split
        self.decode_for = "train" if split == "train" else "eval"  # the JPEG draft size (data/imagenet.py)
        self._mean = torch.tensor(self.info.mean).view(-1, 1, 1)
        self._std = torch.tensor(self.info.std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def load_image(self, index: int) -> torch.Tensor:
        """uint8 ``[C, H, W]`` of one file, resized."""
        from PIL import Image, UnidentifiedImageError

        path = self.files[index]
        h, w = self.info.image_size
        mode = "RGB" if self.info.in_channels == 3 else "L"
        try:
            with Image.open(path) as im:
                if self.variable_size:
                    from .imagenet import draft_size

                    # a JPEG decodes at ½, ¼ or ⅛ scale when the crop that follows keeps image_size
                    im.draft(mode, draft_size(im.width, im.height, (h, w), self.decode_for))
                im = im.convert(mode)
                if im.size != (w, h) and not self.variable_size:
                    im = im.resize((w, h), Image.BILINEAR)
                arr = np.array(im, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataError(f"imagefolder: cannot decode {path} ({type(e).__name__}); remove or replace the file") from None
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def __getitem__(self, index: int) -> Sample:
        if self.variable_size:  # full-size photos: normalise in place, one pass fewer over the pixels
            x = self.load_image(index).float().sub_(self._mean * 255.0).div_(self._std * 255.0)
            return {"input": x, "label": self.labels[index]}
        x = self.load_image(index).float().div_(255.0)
        return {"input": (x - self._mean) / self._std, "label": self.labels[index]}


register_dataset("imagefolder")(ImageFolderDataset)
