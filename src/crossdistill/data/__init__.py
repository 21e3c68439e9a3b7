"""Datasets. Importing this package registers every built-in dataset."""
from .registry import DATASETS, DatasetInfo, create_dataset, list_datasets, register_dataset
from .seeded import SampleFieldsDataset
from .wrappers import IndexedDataset

from . import procedural, scenes, cifar, imagefolder, fashion_mnist, nyuv2  # noqa: F401,E402

__all__ = ["DATASETS", "DatasetInfo", "IndexedDataset", "SampleFieldsDataset", "create_dataset", "list_datasets", "register_dataset"]
