"""Input pipelines for data-parallel training: seeded splits and each worker's share of every global batch.

Every worker draws the same seeded permutation (and augmentation) of the training set each epoch and keeps its
contiguous slice of every global batch, so N workers together see exactly the batches a single worker would.
"""

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import tensorflow as tf


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


def _scale(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(images, tf.float32) / 255.0, tf.cast(labels, tf.int32)


def steps_per_epoch(num_samples: int, global_batch_size: int) -> int:
    """Full global batches per epoch: the remainder is dropped so every step has the same global batch."""
    return num_samples // global_batch_size


def augment(images: tf.Tensor, flips: tf.Tensor, offsets: tf.Tensor, flip: bool, shift: int) -> tf.Tensor:
    """With `flip`, mirror the images where `flips` is true; with `shift`, move each by its (rows, columns) `offsets`,
    filling with 0."""
    if flip:
        images = tf.where(flips[:, None, None, None], tf.reverse(images, axis=[2]), images)
    if not shift:
        return images
    height, width = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [shift, shift], [shift, shift], [0, 0]])
    # Output pixel (r, c) is input pixel (r + row offset, c + column offset): crop the padded image at shift + offset.
    rows = offsets[:, 0:1] + shift + tf.range(height)
    columns = offsets[:, 1:2] + shift + tf.range(width)
    return tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), columns, axis=2, batch_dims=1)


def train_batches(
    data: Split,
    global_batch_size: int,
    seed: int,
    epoch: int,
    num_workers: int,
    worker_index: int,
    flip: bool = False,
    shift: int = 0,
) -> tf.data.Dataset:
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
    flips = generator.random((steps, global_batch_size)) < 0.5
    offsets = generator.integers(-shift, shift + 1, (steps, global_batch_size, 2), dtype=np.int32)
    batches = tf.data.Dataset.from_tensor_slices(
        (data.images[order[:, mine]], data.labels[order[:, mine]], flips[:, mine], offsets[:, mine])
    )

    def scale_and_augment(
        images: tf.Tensor, labels: tf.Tensor, flips: tf.Tensor, offsets: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        images, labels = _scale(images, labels)
        return augment(images, flips, offsets, flip, shift), labels

    return batches.map(scale_and_augment, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def eval_batches(data: Split, batch_size: int, num_workers: int, worker_index: int) -> tf.data.Dataset:
    """Every `num_workers`-th sample from `worker_index` on, batched and scaled: the workers' shards cover the set."""
    shard = Split(data.images[worker_index::num_workers], data.labels[worker_index::num_workers])
    batches = tf.data.Dataset.from_tensor_slices(tuple(shard)).batch(batch_size)
    return batches.map(_scale, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


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
    ) -> tf.data.Dataset:
        """This worker's slice of every global batch of epoch `epoch` (train_batches)."""
        return train_batches(self.splits["train"], global_batch_size, seed, epoch, num_workers, worker_index,
                             self.flip, self.shift)  # fmt: skip

    def evaluation(self, split: str, batch_size: int, num_workers: int, worker_index: int) -> tf.data.Dataset:
        """This worker's share of `split` (eval_batches)."""
        return eval_batches(self.splits[split], batch_size, num_workers, worker_index)
