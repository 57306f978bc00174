"""What the driver learns of a data set before training (DataSet), and what a worker trains from (Batches)."""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from dltrain.data.pipeline import Batch


@dataclass(frozen=True)
class DataSet:
    """A located, checked data set: its input shape and class names, where workers read it, its files' md5s
    (for the run's provenance), its samples per split, lines worth telling the user (skipped images, dropped
    classes), and the dataset.path its workers read as it is, which every node of a cluster must then see
    (None: none; cluster.check_paths_on_nodes skips an s3:// one)."""

    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    location: str
    files_md5: dict[str, str]
    sizes: dict[str, int]
    notes: tuple[str, ...] = field(default=())
    shared_path: str | None = None


class Batches(Protocol):
    """A worker's batches of the train, validation and test splits."""

    @property
    def sizes(self) -> dict[str, int]:
        """Samples per split: train, validation, test."""

    def train(
        self, global_batch_size: int, seed: int, epoch: int, num_workers: int, worker_index: int
    ) -> Iterator[Batch]:
        """This worker's batches of epoch `epoch`: steps_per_epoch of global_batch_size / num_workers samples."""

    def evaluation(self, split: str, batch_size: int, num_workers: int, worker_index: int) -> Iterator[Batch]:
        """This worker's share of `split`; the workers' shares together cover it once."""
