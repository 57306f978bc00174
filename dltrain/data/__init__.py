"""Data sets and input pipelines: pure NumPy / pyarrow / Pillow code, no Ray, Hydra or framework.

A data set module offers `describe(dataset, storage, seed) -> DataSet`, the driver's check before training
(dataset.py), and `batches(dataset, data, storage, seed) -> Batches`, what a worker trains from; `dataset` and
`storage` are the job's typed sections (job.py), `seed` is trainer.seed (which chooses the splits).
"""

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from dltrain.job import DatasetConfig, StorageConfig

if TYPE_CHECKING:
    from dltrain.data.dataset import Batches, DataSet

DATASETS = ("fashion_mnist", "image_folder")


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"dltrain.data.{name}")


def describe(dataset: DatasetConfig, storage: StorageConfig, seed: int) -> "DataSet":
    """Locate and check the data set a `dataset` config names, before any worker starts."""
    return _module(dataset.name).describe(dataset, storage, seed)


def batches(dataset: DatasetConfig, data: "DataSet", storage: StorageConfig, seed: int) -> "Batches":
    """A worker's batches of the data set the driver described as `data`."""
    return _module(dataset.name).batches(dataset, data, storage, seed)
