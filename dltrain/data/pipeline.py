"""Input pipelines for data-parallel training: seeded splits and each worker's share of every global batch.

Every worker draws the same seeded permutation of the training set each epoch and keeps its contiguous slice
of every global batch, so N workers together see exactly the batches a single worker would.
"""

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


def train_batches(
    data: Split, global_batch_size: int, seed: int, epoch: int, num_workers: int, worker_index: int
) -> tf.data.Dataset:
    """This worker's slice of every global batch of epoch `epoch`, scaled to [0, 1]."""
    steps = steps_per_epoch(len(data.images), global_batch_size)
    per_worker = global_batch_size // num_workers
    order = np.random.default_rng([seed, epoch]).permutation(len(data.images))[: steps * global_batch_size]
    mine = order.reshape(steps, global_batch_size)[:, worker_index * per_worker : (worker_index + 1) * per_worker]
    batches = tf.data.Dataset.from_tensor_slices((data.images[mine], data.labels[mine]))
    return batches.map(_scale, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def eval_batches(data: Split, batch_size: int, num_workers: int, worker_index: int) -> tf.data.Dataset:
    """Every `num_workers`-th sample from `worker_index` on, batched and scaled: the workers' shards cover the set."""
    shard = Split(data.images[worker_index::num_workers], data.labels[worker_index::num_workers])
    batches = tf.data.Dataset.from_tensor_slices(tuple(shard)).batch(batch_size)
    return batches.map(_scale, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
