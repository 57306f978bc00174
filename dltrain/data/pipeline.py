"""Input pipelines for data-parallel training, in NumPy: seeded splits, each worker's share of every global batch,
augmentation, and a thread that prepares the next batches while the current one trains.

Every worker draws the same seeded permutation (and augmentation) of the training set each epoch and keeps its
contiguous slice of every global batch, so N workers together see exactly the batches a single worker would.
Batches are NumPy arrays, whatever the framework: each backend turns them into its own input type.
"""

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

Batch = tuple[np.ndarray, np.ndarray]  # images (float32, NHWC, in [0, 1]) and labels (int32)
PREFETCH = 2  # batches made ahead of the one training: the next is ready when a step ends


class Split(NamedTuple):
    """Images (uint8, NHWC) and integer labels."""

    images: np.ndarray
    labels: np.ndarray


def train_validation_split(
    images: np.ndarray, labels: np.ndarray, validation_split: float, seed: int, limit: int | None = None
) -> tuple[Split, Split]:
    """Take the first `limit` samples (all if None), then hold out a seeded `validation_split` share."""
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    order = np.random.default_rng(seed).permutation(len(images))
    held_out = round(len(images) * validation_split)
    validation, train = order[:held_out], order[held_out:]
    return Split(images[train], labels[train]), Split(images[validation], labels[validation])


def scale(images: np.ndarray, labels: np.ndarray) -> Batch:
    """uint8 images to float32 in [0, 1], labels to int32."""
    return images.astype(np.float32) / np.float32(255.0), labels.astype(np.int32)


def steps_per_epoch(num_samples: int, global_batch_size: int) -> int:
    """Full global batches per epoch: the remainder is dropped so every step has the same global batch."""
    return num_samples // global_batch_size


def draw_augmentation(
    generator: np.random.Generator, shape: tuple[int, ...], shift: int
) -> tuple[np.ndarray, np.ndarray]:
    """A flip (true with probability 1/2) and a (rows, columns) offset in [-shift, shift] for each image of
    `shape`, drawn from `generator`."""
    flips = generator.random(shape) < 0.5
    offsets = generator.integers(-shift, shift + 1, (*shape, 2), dtype=np.int32)
    return flips, offsets


def augment(images: np.ndarray, flips: np.ndarray, offsets: np.ndarray, flip: bool, shift: int) -> np.ndarray:
    """With `flip`, mirror the images (NHWC) where `flips` is true; with `shift`, move each by its (rows, columns)
    `offsets`, filling with 0."""
    if shift < 0:
        raise ValueError(f"shift must be >= 0 pixels, got {shift}")
    if flip:
        images = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
    if not shift:
        return images
    count, height, width = images.shape[:3]
    padded = np.pad(images, [(0, 0), (shift, shift), (shift, shift), (0, 0)])
    # Output pixel (r, c) is input pixel (r + row offset, c + column offset): crop the padded image at shift + offset.
    rows = offsets[:, 0:1] + shift + np.arange(height)
    columns = offsets[:, 1:2] + shift + np.arange(width)
    return padded[np.arange(count)[:, None, None], rows[:, :, None], columns[:, None, :]]


def train_batches(
    data: Split,
    global_batch_size: int,
    seed: int,
    epoch: int,
    num_workers: int,
    worker_index: int,
    flip: bool = False,
    shift: int = 0,
) -> Iterator[Batch]:
    """This worker's slice of every global batch of epoch `epoch`, scaled to [0, 1] and optionally augmented.

    `flip` mirrors each image left-right with probability 1/2; `shift` moves it by up to `shift` pixels along
    each axis, filling with 0. The random draws are made for the whole global batch from (seed, epoch) and
    sliced like the images, so N workers see exactly the images one worker would. Labels are never changed.
    """
    if shift < 0:
        raise ValueError(f"shift must be >= 0 pixels, got {shift}")
    steps = steps_per_epoch(len(data.images), global_batch_size)
    per_worker = global_batch_size // num_workers
    mine = slice(worker_index * per_worker, (worker_index + 1) * per_worker)
    generator = np.random.default_rng([seed, epoch])
    order = generator.permutation(len(data.images))[: steps * global_batch_size].reshape(steps, global_batch_size)
    # Drawn after the shuffle, which therefore stays the same with and without augmentation.
    flips, offsets = draw_augmentation(generator, (steps, global_batch_size), shift)

    def batches() -> Iterator[Batch]:
        for step in range(steps):
            rows = order[step, mine]
            images = augment(data.images[rows], flips[step, mine], offsets[step, mine], flip, shift)
            yield scale(images, data.labels[rows])

    return prefetched(batches())


def eval_batches(data: Split, batch_size: int, num_workers: int, worker_index: int) -> Iterator[Batch]:
    """Every `num_workers`-th sample from `worker_index` on, batched and scaled: the workers' shards cover the set."""
    images, labels = data.images[worker_index::num_workers], data.labels[worker_index::num_workers]
    starts = range(0, len(labels), batch_size)
    return prefetched(scale(images[start : start + batch_size], labels[start : start + batch_size]) for start in starts)


class _Failed(NamedTuple):
    error: BaseException


_END = object()


def prefetched(batches: Iterable[Batch], depth: int = PREFETCH) -> Iterator[Batch]:
    """`batches`, made `depth` ahead in a thread of their own (NumPy, Pillow and pyarrow release the GIL while
    they work); an error in the thread is raised here. Abandoning the iterator stops the thread."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def make() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(_END)
        except BaseException as error:  # handed to the consumer
            put(_Failed(error))

    thread = threading.Thread(target=make, name="dltrain-batches", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not _END:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()


@dataclass
class ArrayBatches:
    """Batches of train, validation and test arrays held in memory (the `Batches` of dataset.py)."""

    splits: dict[str, Split]  # train, validation, test
    flip: bool = False
    shift: int = 0

    @property
    def sizes(self) -> dict[str, int]:
        """Samples per split."""
        return {name: len(split.images) for name, split in self.splits.items()}

    def train(
        self, global_batch_size: int, seed: int, epoch: int, num_workers: int, worker_index: int
    ) -> Iterator[Batch]:
        """This worker's slice of every global batch of epoch `epoch` (train_batches)."""
        return train_batches(self.splits["train"], global_batch_size, seed, epoch, num_workers, worker_index,
                             self.flip, self.shift)  # fmt: skip

    def evaluation(self, split: str, batch_size: int, num_workers: int, worker_index: int) -> Iterator[Batch]:
        """This worker's share of `split` (eval_batches)."""
        return eval_batches(self.splits[split], batch_size, num_workers, worker_index)
