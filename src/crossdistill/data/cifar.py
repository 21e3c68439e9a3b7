"""``"cifar10"`` and ``"cifar100"`` from the official python-pickle folders.

Layout (as extracted from the official tarballs):

- ``cifar-10-batches-py/data_batch_1 … data_batch_5, test_batch``: dicts with ``b"data"``
  (uint8 ``[N, 3072]``, channel-major) and ``b"labels"``;
- ``cifar-100-python/train, test``: dicts with ``b"data"`` and ``b"fine_labels"``.

``root`` may point at the extracted folder itself or at its parent; without ``root`` the loader
looks under ``$CROSSDISTILL_DATA`` (else ``~/data``). Images are kept as uint8 and normalised per
sample with the usual CIFAR mean/std.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..errors import DataError
from .registry import DatasetInfo, register_dataset
from .wrappers import InMemoryDataset, check_split, default_data_root, optional_subset, resolve_options

URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

_VARIANTS = {
    "cifar10": dict(
        folder="cifar-10-batches-py", tarball="cifar-10-python.tar.gz", num_classes=10,
        files={"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        label_key=b"labels",
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": dict(
        folder="cifar-100-python", tarball="cifar-100-python.tar.gz", num_classes=100,
        files={"train": ["train"], "test": ["test"]},
        label_key=b"fine_labels",
        mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761),
    ),
}

DEFAULTS = dict(subset=None)


def _candidates(root: Optional[str], folder: str) -> List[Path]:
    base = Path(root).expanduser() if root is not None else default_data_root()
    out = [base] if base.name == folder else []
    out.append(base / folder)
    return out


def find_folder(name: str, root: Optional[str]) -> Path:
    v = _VARIANTS[name]
    tried = _candidates(root, v["folder"])
    for path in tried:
        if all((path / f).is_file() for files in v["files"].values() for f in files):
            return path
    tried_s = ", ".join(str(p) for p in tried)
    root_s = str(tried[-1].parent)
    raise DataError(
        f"{name}: no {v['folder']} folder with {', '.join(v['files']['train'] + v['files']['test'])} "
        f"found (tried {tried_s}); download {v['tarball']} from {URL} and extract it under {root_s}"
    )


def _load_batch(path: Path, label_key: bytes) -> Tuple[np.ndarray, np.ndarray]:
    # pickle can run arbitrary code stored in the file: only load CIFAR files you trust (e.g. the
    # official tarball). We keep pickle because it is the official distribution format.
    try:
        with open(path, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
    except Exception as e:  # truncated or not a pickle at all
        raise DataError(
            f"cannot read CIFAR batch {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
            "re-extract the official tarball"
        ) from None
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        keys = sorted(map(str, d.keys())) if isinstance(d, dict) else type(d).__name__
        raise DataError(
            f"malformed CIFAR batch {path}: expected keys b'data' and {label_key!r}, found {keys}; "
            "re-extract the official tarball"
        )
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise DataError(
            f"malformed CIFAR batch {path}: data must be uint8 [N, 3072] with N labels, "
            f"got data {data.dtype}{list(data.shape)} and labels {list(labels.shape)}"
        )
    return data, labels


class CIFARDataset(InMemoryDataset):
    name = ""

    def __init__(self, split: str = "train", root: Optional[str] = None, **options):
        o = resolve_options(self.name, options, DEFAULTS)
        check_split(self.name, split)
        optional_subset(o["subset"], self.name)
        v = _VARIANTS[self.name]
        folder = find_folder(self.name, root)
        parts = [_load_batch(folder / f, v["label_key"]) for f in v["files"][split]]
        data = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= v["num_classes"]):
            raise DataError(
                f"malformed {self.name} labels in {folder}: values must be in [0, {v['num_classes'] - 1}], "
                f"found [{labels.min()}, {labels.max()}]"
            )
        subset = optional_subset(o["subset"], self.name)
        if subset is not None:
            data, labels = data[:subset], labels[:subset]
        images = torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32)))
        info = DatasetInfo(
            num_classes=v["num_classes"], in_channels=3, image_size=(32, 32),
            fields=("input", "label"), mean=v["mean"], std=v["std"],
        )
        super().__init__(info, {"input": images, "label": torch.from_numpy(labels)})
        self.root = folder
        self.split = split


@register_dataset("cifar10")
class CIFAR10(CIFARDataset):
    name = "cifar10"


@register_dataset("cifar100")
class CIFAR100(CIFARDataset):
    name = "cifar100"
