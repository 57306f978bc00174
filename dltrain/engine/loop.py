"""dltrain's own data-parallel train/eval loop for Keras 3 models under a tf.distribute strategy.

Keras 3's `model.fit` fails on two or more MultiWorkerMirroredStrategy workers (keras-team/keras#20585), so
dltrain runs the step itself: each replica computes the loss on its slice of the global batch, scaled by the
GLOBAL batch size, and the optimizer all-reduces (sums) the gradients, which makes N workers equal one worker
on the same global batch. Keras callbacks are driven as `fit` drives them, at batch and epoch granularity.

Invariants: one replica per worker (one GPU or the CPU), and every worker runs the same number of train steps.
"""

import time
from collections.abc import Callable, Iterable

import keras
import numpy as np
import tensorflow as tf

# Per-step sums kept by each worker: [sum of per-sample losses, correct predictions, samples].
_LOSS, _CORRECT, _COUNT = 0, 1, 2


class DistributedLoop:
    """Train and evaluate `model` (built and compiled inside `strategy.scope()`) with its compiled optimizer."""

    def __init__(self, model: keras.Model, strategy: tf.distribute.Strategy, global_batch_size: int):
        if model.optimizer is None:
            raise ValueError("compile the model with an optimizer inside strategy.scope() first")
        self.model = model
        self.strategy = strategy
        self.global_batch_size = global_batch_size
        self._per_sample_loss = keras.losses.SparseCategoricalCrossentropy(reduction=None)

    def _sums(self, labels: tf.Tensor, probabilities: tf.Tensor, per_sample_loss: tf.Tensor) -> tf.Tensor:
        predicted = tf.argmax(probabilities, axis=-1, output_type=labels.dtype)
        correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32))
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        return tf.stack([tf.reduce_sum(per_sample_loss), correct, count])

    def _replica_train_step(self, images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            probabilities = self.model(images, training=True)
            per_sample_loss = self._per_sample_loss(labels, probabilities)
            loss = tf.nn.compute_average_loss(per_sample_loss, global_batch_size=self.global_batch_size)
            if self.model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(self.model.losses))
        gradients = tape.gradient(loss, self.model.trainable_variables)
        # Keras' TensorFlow optimizer sums the gradients over all replicas before applying them.
        self.model.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables, strict=True))
        return self._sums(labels, probabilities, per_sample_loss)

    def _replica_eval_step(self, images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        probabilities = self.model(images, training=False)
        sums = self._sums(labels, probabilities, self._per_sample_loss(labels, probabilities))
        predicted = tf.argmax(probabilities, axis=-1, output_type=labels.dtype)
        classes = probabilities.shape[-1]
        confusion = tf.math.confusion_matrix(labels, predicted, num_classes=classes, dtype=tf.float32)
        return tf.concat([sums, tf.reshape(confusion, [-1])], axis=0)

    @tf.function
    def _train_step(self, images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        return self._local(self.strategy.run(self._replica_train_step, args=(images, labels)))

    @tf.function
    def _eval_step(self, images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        return self._local(self.strategy.run(self._replica_eval_step, args=(images, labels)))

    def _local(self, per_replica: tf.Tensor) -> tf.Tensor:
        return tf.add_n(self.strategy.experimental_local_results(per_replica))

    def sum_over_workers(self, values: tf.Tensor) -> np.ndarray:
        """All-reduce (sum) a small vector over every worker. A collective: all workers must call it."""
        per_replica = self.strategy.run(tf.identity, args=(tf.convert_to_tensor(values, tf.float32),))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()

    @staticmethod
    def _metrics(sums: np.ndarray) -> dict[str, float]:
        count = max(float(sums[_COUNT]), 1.0)
        return {"loss": float(sums[_LOSS]) / count, "accuracy": float(sums[_CORRECT]) / count}

    def evaluate(self, batches: Iterable) -> tuple[dict[str, float], np.ndarray]:
        """Loss and accuracy over every worker's shard together (workers may hold different batch counts), and
        the confusion matrix: counts of samples by true class (rows) and predicted class (columns)."""
        classes = self.model.output_shape[-1]
        sums = tf.zeros(3 + classes * classes)
        for images, labels in batches:
            sums += self._eval_step(images, labels)
        totals = self.sum_over_workers(sums)
        return self._metrics(totals), totals[3:].reshape(classes, classes).round().astype(int)

    def fit(
        self,
        train_batches: Callable[[int], Iterable],
        steps_per_epoch: int,
        epochs: int,
        initial_epoch: int = 0,
        validation_batches: Callable[[], Iterable] | None = None,
        callbacks: list[keras.callbacks.Callback] | None = None,
    ) -> list[dict[str, float]]:
        """Train epochs `initial_epoch`..`epochs - 1`; returns each epoch's logs.

        `train_batches(epoch)` yields this worker's (images, labels) slice of every global batch. Epoch logs
        hold loss, accuracy, val_loss, val_accuracy (over all workers), seconds and samples_per_second.
        `model.stop_training` is honoured at epoch ends, when any worker's callbacks set it.
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
            sums = tf.zeros(3)
            for step, (images, labels) in enumerate(train_batches(epoch)):
                callback_list.on_train_batch_begin(step)
                sums += self._train_step(images, labels)
                callback_list.on_train_batch_end(step, self._metrics(sums.numpy()))
            train_seconds = time.perf_counter() - started
            logs = self._metrics(self.sum_over_workers(sums))
            if validation_batches is not None:
                validation, _ = self.evaluate(validation_batches())
                logs |= {f"val_{name}": value for name, value in validation.items()}
            logs["seconds"] = time.perf_counter() - started
            logs["samples_per_second"] = steps_per_epoch * self.global_batch_size / train_seconds
            callback_list.on_epoch_end(epoch, logs)
            history.append(logs)
            if self.sum_over_workers([float(self.model.stop_training)])[0] > 0:
                break
        callback_list.on_train_end(history[-1] if history else None)
        return history
