"""``"fashion_mnist"`` from the IDX files (raw or ``.gz``):
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``.

Search order without ``root``: ``/usr/share/datasets/fashion-mnist/`` (Debian package
``dataset-fashion-mnist``), then ``$CROSSDISTILL_DATA/fashion-mnist`` (``~/data/fashion-mnist`` when
the variable is unset). With ``root``: ``root`` and ``root/fashion-mnist``.

Options: ``image_size`` (default 28; other sizes are resized bilinearly), ``pad_to`` (zero-pad —
the black background — to a larger square, e.g. 32 for CIFAR-sized models), ``in_channels`` (1, or 3
to repeat the grey channel for RGB models), ``subset`` (keep the first N samples, for quick runs), ``test_subset``
(the test split's own N; default: ``subset``).
The IDX parser is our own (numpy): magic number, dimensions and file size are checked.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from .registry import DatasetInfo, register_dataset
from .wrappers import InMemoryDataset, check_split, default_data_root, optional_subset, positive_int, resolve_options

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
MEAN, STD = (0.2860,), (0.3530,)
DEFAULTS = dict(image_size=28, pad_to=None, in_channels=1, subset=None, test_subset=None)

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzip-compressed) → numpy array."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read IDX file {path} ({type(e).__name__}: {e}); re-download it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise DataError(
            f"malformed IDX file {path}: bad magic number {raw[:4].hex() or '(empty)'} "
            "(expected 0000 + type byte + number of dimensions); re-download it"
        )
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"malformed IDX file {path}: truncated header; re-download it")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"malformed IDX file {path}: dimensions {dims} need {expected} bytes, the file has {len(raw)}; "
            "re-download it"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _search_dirs(root: Optional[str]) -> List[Path]:
    if root is not None:
        base = Path(root).expanduser()
        return [base, base / "fashion-mnist"]
    return [SYSTEM_DIR, default_data_root() / "fashion-mnist"]


def _find(dirs: List[Path], stem: str) -> Optional[Path]:
    for d in dirs:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


class FashionMNIST(InMemoryDataset):
    def __init__(self, split: str = "train", root: Optional[str] = None, **options):
        o = resolve_options("fashion_mnist", options, DEFAULTS)
        check_split("fashion_mnist", split)
        size = positive_int(o["image_size"], "fashion_mnist", "image_size")
        pad_to = o["pad_to"]
        if pad_to is not None and (positive_int(pad_to, "fashion_mnist", "pad_to") < size):
            raise ConfigError(f"dataset 'fashion_mnist': pad_to={pad_to} must be >= image_size={size}")
        channels = o["in_channels"]
        if channels not in (1, 3):
            raise ConfigError(f"dataset 'fashion_mnist': option in_channels={channels!r} must be 1 or 3")
        subset = optional_subset(o["subset"], "fashion_mnist")
        if split == "test" and o["test_subset"] is not None:  # e.g. a small training subset, the full test set
            subset = optional_subset(o["test_subset"], "fashion_mnist")

        dirs = _search_dirs(root)
        img_stem, lab_stem = FILES[split]
        img_path, lab_path = _find(dirs, img_stem), _find(dirs, lab_stem)
        if img_path is None or lab_path is None:
            missing = img_stem if img_path is None else lab_stem
            raise DataError(
                f"fashion_mnist: {missing}[.gz] not found in {', '.join(map(str, dirs))}; install it with: "
                f"apt-get install dataset-fashion-mnist (Debian) or put the IDX files under {dirs[-1]}"
            )
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
            raise DataError(
                f"malformed fashion_mnist files {img_path} / {lab_path}: expected uint8 images [N, H, W] "
                f"and N labels, got {images.dtype}{list(images.shape)} and {list(labels.shape)}"
            )
        if labels.size and labels.max() >= len(CLASSES):
            raise DataError(f"malformed fashion_mnist labels in {lab_path}: values must be 0..9, found {labels.max()}")
        if subset is not None:
            images, labels = images[:subset], labels[:subset]

        x = torch.from_numpy(np.array(images)).unsqueeze(1)  # uint8 [N, 1, H, W]
        if x.shape[-2:] != (size, size) and len(x):
            x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            x = x.round().clamp(0, 255).to(torch.uint8)
        final = size
        if pad_to is not None and pad_to > size:
            lo = (pad_to - size) // 2
            x = F.pad(x, (lo, pad_to - size - lo, lo, pad_to - size - lo), value=0)
            final = pad_to
        if channels == 3:
            x = x.expand(-1, 3, -1, -1).contiguous()
        info = DatasetInfo(
            num_classes=len(CLASSES), in_channels=channels, image_size=(final, final),
            fields=("input", "label"), mean=MEAN * channels, std=STD * channels,
        )
        super().__init__(info, {"input": x, "label": torch.from_numpy(labels.astype(np.int64))})
        self.classes = CLASSES
        self.files = (img_path, lab_path)
        self.split = split


register_dataset("fashion_mnist")(FashionMNIST)
