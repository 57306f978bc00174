"""dltrain's own data-parallel training loop for Keras 3 models, the same whatever the framework: epochs, Keras
callbacks driven as `fit` drives them, validation, and the sums every worker agrees on.

Keras 3's `model.fit` fails on two or more MultiWorkerMirroredStrategy workers (keras-team/keras#20585), so
dltrain runs the steps itself. A framework's backend (dltrain/frameworks/) owns the steps: each worker computes
the loss of its slice of the global batch, scaled by the GLOBAL batch size, and the gradients are summed over
the workers, which makes N workers equal one worker on the same global batch. With `steps_per_execution=K`, as
in Keras, one call runs K steps and the batch callbacks see every K-th.

Invariants: one device (a GPU or the CPU) per worker, and every worker runs the same number of train steps.
"""

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import keras
import numpy as np

from dltrain.data.pipeline import Batch

# Per-step sums kept by each worker: [sum of per-sample losses, correct predictions, samples].
LOSS, CORRECT, COUNT = 0, 1, 2
SUMS = 3


class Steps(Protocol):
    """A framework's train and eval steps over one worker's NumPy batches, and its collectives."""

    def input(self, batches: Iterator[Batch]) -> Any:
        """`batches` as the framework's input, which `train` takes its next batches from."""

    def train(self, inputs: Any, steps: int) -> np.ndarray:
        """Run `steps` train steps on the next batches of `inputs`: the sums (LOSS, CORRECT, COUNT) over this
        worker's slices."""

    def evaluate(self, batches: Iterator[Batch]) -> np.ndarray:
        """The eval sums and the confusion matrix (flattened, true class by predicted) of this worker's
        `batches`."""

    def sum_over_workers(self, values: np.ndarray | list[float]) -> np.ndarray:
        """All-reduce (sum) a small vector over every worker. A collective: all workers must call it."""

    def sync_model(self) -> None:
        """Make the model's variables hold the trained state (before callbacks read or save them)."""


def metrics(sums: np.ndarray) -> dict[str, float]:
    """Mean loss and accuracy from sums of per-sample losses, correct predictions and samples."""
    count = max(float(sums[COUNT]), 1.0)
    return {"loss": float(sums[LOSS]) / count, "accuracy": float(sums[CORRECT]) / count}


class DistributedLoop:
    """Train and evaluate `model` with a framework's `steps`, `steps_per_execution` steps per call."""

    def __init__(self, model: keras.Model, steps: Steps, global_batch_size: int, steps_per_execution: int = 1):
        if steps_per_execution < 1:
            raise ValueError(f"steps_per_execution must be >= 1, got {steps_per_execution}")
        self.model, self.steps = model, steps
        self.global_batch_size = global_batch_size
        self.steps_per_execution = steps_per_execution

    def sum_over_workers(self, values: np.ndarray | list[float]) -> np.ndarray:
        """All-reduce (sum) a small vector over every worker. A collective: all workers must call it."""
        return self.steps.sum_over_workers(values)

    def evaluate(self, batches: Iterator[Batch]) -> tuple[dict[str, float], np.ndarray]:
        """Loss and accuracy over every worker's shard together (workers may hold different batch counts), and
        the confusion matrix: counts of samples by true class (rows) and predicted class (columns)."""
        classes = self.model.output_shape[-1]
        totals = self.sum_over_workers(self.steps.evaluate(batches))
        return metrics(totals), totals[SUMS:].reshape(classes, classes).round().astype(int)

    def fit(
        self,
        train_batches: Callable[[int], Iterator[Batch]],
        steps_per_epoch: int,
        epochs: int,
        initial_epoch: int = 0,
        validation_batches: Callable[[], Iterator[Batch]] | None = None,
        callbacks: list[keras.callbacks.Callback] | None = None,
    ) -> list[dict[str, float]]:
        """Train epochs `initial_epoch`..`epochs - 1`; returns each epoch's logs.

        `train_batches(epoch)` yields this worker's (images, labels) slice of every global batch, at least
        `steps_per_epoch` of them. Epoch logs hold loss, accuracy, val_loss, val_accuracy (over all workers),
        seconds and samples_per_second. Batch callbacks are called once per execution of `steps_per_execution`
        steps, as Keras calls them: `on_train_batch_begin` with its first step, `on_train_batch_end` with its
        last and the running loss and accuracy of this worker's slices. `model.stop_training` is honoured at
        epoch ends, when any worker's callbacks set it.
        """
        callback_list = keras.callbacks.CallbackList(
            callbacks, model=self.model, epochs=epochs, steps=steps_per_epoch, verbose=0
        )
        history: list[dict[str, float]] = []
        self.model.stop_training = False
        callback_list.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            callback_list.on_epoch_begin(epoch)
            started = time.perf_counter()
            inputs = self.steps.input(train_batches(epoch))
            sums = np.zeros(SUMS)
            try:
                for first in range(0, steps_per_epoch, self.steps_per_execution):
                    count = min(self.steps_per_execution, steps_per_epoch - first)
                    callback_list.on_train_batch_begin(first)
                    sums += self.steps.train(inputs, count)
                    callback_list.on_train_batch_end(first + count - 1, metrics(sums))
            finally:
                # Released now, even when a step or callback raises: the traceback keeps this frame, and a
                # tf.data generator finalized only at interpreter exit prints an error after dltrain's own.
                del inputs
            train_seconds = time.perf_counter() - started
            logs = metrics(self.sum_over_workers(sums))
            if validation_batches is not None:
                validation, _ = self.evaluate(validation_batches())
                logs |= {f"val_{name}": value for name, value in validation.items()}
            logs["seconds"] = time.perf_counter() - started
            logs["samples_per_second"] = steps_per_epoch * self.global_batch_size / train_seconds
            self.steps.sync_model()
            callback_list.on_epoch_end(epoch, logs)
            history.append(logs)
            if self.sum_over_workers([float(self.model.stop_training)])[0] > 0:
                break
        callback_list.on_train_end(history[-1] if history else None)
        return history
