"""Dataset registry: ``create_dataset(name, split, root=None, **options)``.

Every dataset returns samples as ``dict[str, Tensor]`` (see ``tasks/base.py`` for the field
names), has an ``info`` attribute (:class:`DatasetInfo`) and, when it has class labels, a
``labels`` attribute (``LongTensor [N]``) so that samplers (e.g. CRD's negatives) can read all
labels without decoding images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

from torch.utils.data import Dataset

from ..registry import Registry


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    in_channels: int
    image_size: Tuple[int, int]
    fields: Tuple[str, ...]                      # e.g. ("input", "label") or ("input", "label", "mask", "depth", "translation")
    mean: Tuple[float, ...] = field(default=())  # per-channel normalisation applied by the dataset
    std: Tuple[float, ...] = field(default=())
    num_seg_classes: Optional[int] = None        # for datasets with a "mask" field


DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")
register_dataset = DATASETS.register


def create_dataset(name: str, split: str = "train", root: Optional[str] = None, **options) -> Dataset:
    return DATASETS.get(name)(split=split, root=root, **options)


def list_datasets() -> list[str]:
    return DATASETS.names()
