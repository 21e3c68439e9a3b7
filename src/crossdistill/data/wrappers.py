"""Dataset wrappers and the small helpers every dataset in this package shares.

- :class:`IndexedDataset` adds the sample's position as ``"index"`` (CRD's memory banks need it).
- Per-sample augmentation lives in :class:`crossdistill.data.seeded.AugmentedDataset` (seeded per sample).
- :class:`InMemoryDataset` holds a whole split as stacked tensors (uint8 images, decoded and
  normalised per sample) — used by the procedural generators and the small real datasets.
- :func:`check_options` / :func:`check_split`: unknown options and splits are config errors that
  name the valid choices, never silently ignored.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import ConfigError, did_you_mean
from .registry import DatasetInfo

Sample = Dict[str, Tensor]


# --------------------------------------------------------------------------- option checking

def check_options(name: str, given: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Raise :class:`ConfigError` if ``given`` has a key that is not in ``allowed``."""
    allowed = sorted(allowed)
    for key in given:
        if key not in allowed:
            valid = ", ".join(allowed) if allowed else "none"
            hint = did_you_mean(key, allowed)
            close = f" ({hint})" if hint.startswith("did you mean") else ""  # else it would list them twice
            raise ConfigError(f"dataset '{name}' has no option '{key}'{close}; valid options: {valid}")


def resolve_options(name: str, given: Mapping[str, Any], defaults: Mapping[str, Any]) -> Dict[str, Any]:
    """``defaults`` updated with ``given``, after checking that every given key is known."""
    check_options(name, given, defaults.keys())
    out = dict(defaults)
    out.update(given)
    return out


def check_split(name: str, split: str, allowed: Sequence[str] = ("train", "test")) -> str:
    if split not in allowed:
        raise ConfigError(
            f"dataset '{name}' has no split '{split}'; valid splits: {', '.join(allowed)}"
        )
    return split


def as_size(value: Any, name: str, option: str = "image_size") -> Tuple[int, int]:
    """An int or a pair → ``(H, W)``; anything else is a :class:`ConfigError`."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    ok = (
        isinstance(value, (tuple, list)) and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    )
    if not ok:
        raise ConfigError(
            f"dataset '{name}': option {option}={value!r} must be a positive int or a pair (H, W)"
        )
    h, w = int(value[0]), int(value[1])
    return h, w


def positive_int(value: Any, name: str, option: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"dataset '{name}': option {option}={value!r} must be an int >= {minimum}")
    return value


def optional_subset(value: Any, name: str) -> Optional[int]:
    """The ``subset`` option: ``None`` (all samples) or the number of leading samples to keep."""
    if value is None:
        return None
    return positive_int(value, name, "subset")


def default_data_root() -> Path:
    """``$CROSSDISTILL_DATA`` if set, else ``~/data``."""
    env = os.environ.get("CROSSDISTILL_DATA")
    return Path(env).expanduser() if env else Path("~/data").expanduser()


# --------------------------------------------------------------------------- wrappers

class IndexedDataset(Dataset):
    """Adds ``"index"`` (a ``torch.long`` scalar: the sample's position) to every sample."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        sample = dict(self.dataset[index])
        sample["index"] = torch.tensor(int(index), dtype=torch.long)
        return sample

    @property
    def info(self) -> DatasetInfo:
        return self.dataset.info  # type: ignore[attr-defined]

    @property
    def labels(self) -> Tensor:
        return self.dataset.labels  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- in-memory storage

class InMemoryDataset(Dataset):
    """A split held as stacked tensors, decoded per sample.

    Storage conventions (chosen to keep memory small; a CIFAR split is 150 MB as uint8, 600 MB
    as float):

    - ``"input"``: uint8 ``[N, C, H, W]`` → float, ``/255``, normalised with ``info.mean/std``
    - ``"translation"``: uint8 ``[N, 3, H, W]`` → float in [0, 1]
    - ``"mask"``: uint8 ``[N, H, W]`` (255 = ignore) → long
    - ``"depth"``: float ``[N, 1, H, W]`` (metres, 0 = invalid) → float32
    - ``"label"``: long ``[N]`` → long scalar; also exposed as ``labels``
    """

    def __init__(self, info: DatasetInfo, data: Dict[str, Tensor]):
        n = {k: v.shape[0] for k, v in data.items()}
        if len(set(n.values())) != 1:
            raise ValueError(f"fields have different lengths: {n}")
        self.info = info
        self.data = data
        c = data["input"].shape[1]
        mean = torch.tensor(info.mean if info.mean else (0.0,) * c, dtype=torch.float32)
        std = torch.tensor(info.std if info.std else (1.0,) * c, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std)).view(-1, 1, 1)
        self._shift = (-mean / std).view(-1, 1, 1)
        if "label" in data:
            self.labels = data["label"].long()

    def __len__(self) -> int:
        return int(self.data["input"].shape[0])

    def __getitem__(self, index: int) -> Sample:
        # every returned tensor is a copy: a caller's in-place edit must not change the dataset
        out: Sample = {}
        for key, t in self.data.items():
            x = t[index]
            if key == "input" and x.dtype == torch.uint8:
                x = x.float() * self._scale + self._shift
            elif key == "translation" and x.dtype == torch.uint8:
                x = x.float() / 255.0
            elif key in ("mask", "label"):
                x = x.to(torch.long, copy=True)
            else:
                x = x.to(torch.float32, copy=True)
            out[key] = x
        return out


# --------------------------------------------------------------------------- validation split

#: The held-out validation split is drawn with this fixed seed, not the run's: every run seed and
#: every candidate of a weight selection is scored on the *same* validation samples.
VALIDATION_SEED = 0


def validation_split(n: int, validation, seed: int = VALIDATION_SEED) -> Tuple[Tensor, Tensor]:
    """``(train_indices, validation_indices)`` of a training split of ``n`` samples, disjoint and
    together covering ``range(n)``, each sorted.

    ``validation`` is a count (int ≥ 1) or a fraction of ``n`` (float in (0, 1), rounded, at least
    one sample). The permutation comes from ``seed`` alone (default :data:`VALIDATION_SEED`).
    """
    if isinstance(validation, float):
        n_val = max(1, round(validation * n))
    else:
        n_val = int(validation)
    if not 1 <= n_val < n:
        raise ConfigError(f"data.validation={validation!r} holds out {n_val} of the {n} training samples; "
                          f"it must leave at least one to train on (use a count below {n} or a fraction below 1)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


class SubsetDataset(Dataset):
    """The samples of ``dataset`` at ``indices`` (renumbered from 0), keeping ``info`` and ``labels``."""

    def __init__(self, dataset: Dataset, indices: Tensor):
        self.dataset = dataset
        self.indices = indices.long()
        self.info = getattr(dataset, "info", None)
        labels = getattr(dataset, "labels", None)
        self.labels = labels[self.indices] if labels is not None else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        return self.dataset[int(self.indices[index])]
