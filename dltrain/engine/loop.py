"""dltrain's own data-parallel train/eval loop for Keras 3 models under a tf.distribute strategy.

Keras 3's `model.fit` fails on two or more MultiWorkerMirroredStrategy workers (keras-team/keras#20585), so
dltrain runs the step itself: each replica computes the loss on its slice of the global batch, scaled by the
GLOBAL batch size, and the optimizer all-reduces (sums) the gradients, which makes N workers equal one worker
on the same global batch. Keras callbacks are driven as `fit` drives them, at batch and epoch granularity; with
`steps_per_execution=K`, as in Keras, one `tf.function` call runs K steps and the batch callbacks see every K-th.

Invariants: one replica per worker (one GPU or the CPU), and every worker runs the same number of train steps.
"""

import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

# Per-step sums kept by each worker: [sum of per-sample losses, correct predictions, samples].
_LOSS, _CORRECT, _COUNT = 0, 1, 2


def resolve_jit_compile(setting: str | bool, use_gpu: bool, deterministic: bool) -> bool:
    """`trainer.jit_compile`: `auto` is XLA on a GPU worker (as Keras decides), but not on a CPU (measured 8x
    slower there) nor with deterministic ops, not all of which XLA supports; true and false are taken as given."""
    if setting == "auto":
        return use_gpu and not deterministic
    if not isinstance(setting, bool):
        raise ValueError(f"jit_compile must be auto, true or false, got {setting!r}")
    return setting


class DistributedLoop:
    """Train and evaluate `model` (built and compiled inside `strategy.scope()`) with its compiled optimizer.

    `steps_per_execution` train steps run in each `tf.function` call, one host round trip. With `jit_compile`
    XLA compiles each step (the replica's forward and backward pass, the gradient all-reduce and the update) and
    each eval step, as Keras compiles its step; the loop over the input stays outside, as the iterator has no XLA
    kernel. XLA compiles collectives on GPUs only: on CPUs it fails with two or more workers.
    """

    def __init__(
        self,
        model: keras.Model,
        strategy: tf.distribute.Strategy,
        global_batch_size: int,
        steps_per_execution: int = 1,
        jit_compile: bool = False,
    ):
        if model.optimizer is None:
            raise ValueError("compile the model with an optimizer inside strategy.scope() first")
        if steps_per_execution < 1:
            raise ValueError(f"steps_per_execution must be >= 1, got {steps_per_execution}")
        self.model = model
        self.strategy = strategy
        self.global_batch_size = global_batch_size
        self.steps_per_execution = steps_per_execution
        self._per_sample_loss = keras.losses.SparseCategoricalCrossentropy(reduction=None)
        if not model.optimizer.built:
            # Before the step is traced: a LossScaleOptimizer's scale_loss reads its scale variable only once
            # built (the trace would keep the initial scale as a constant), and variables belong in the scope.
            with strategy.scope():
                model.optimizer.build(model.trainable_variables)
        # mixed_float16: the LossScaleOptimizer decides on each worker's own gradients whether to skip a step.
        self._agree_on_overflow = (
            isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) and strategy.num_replicas_in_sync > 1
        )
        compile_step = tf.function(jit_compile=True) if jit_compile else (lambda step: step)
        self._train_step = compile_step(self._train_step_on_replicas)
        self._eval_step = compile_step(self._eval_step_on_replicas)

    def _sums(self, labels: tf.Tensor, probabilities: tf.Tensor, per_sample_loss: tf.Tensor) -> tf.Tensor:
        predicted = tf.argmax(probabilities, axis=-1, output_type=labels.dtype)
        correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32))
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        return tf.stack([tf.reduce_sum(per_sample_loss), correct, count])

    def _probabilities(self, images: tf.Tensor, training: bool) -> tf.Tensor:
        # Under a mixed policy the layers compute in float16 or bfloat16: the loss and metrics in float32.
        return tf.cast(self.model(images, training=training), tf.float32)

    def _replica_train_step(self, images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            probabilities = self._probabilities(images, training=True)
            per_sample_loss = self._per_sample_loss(labels, probabilities)
            loss = tf.nn.compute_average_loss(per_sample_loss, global_batch_size=self.global_batch_size)
            if self.model.losses:
                regularization = tf.add_n([tf.cast(term, tf.float32) for term in self.model.losses])
                loss += tf.nn.scale_regularization_loss(regularization)
            # A LossScaleOptimizer multiplies the loss by its scale, so that small float16 gradients do not
            # underflow, and divides the gradients back in apply_gradients; other optimizers leave it as it is.
            scaled_loss = self.model.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self.model.trainable_variables)
        if self._agree_on_overflow:
            gradients = self._overflow_anywhere(gradients)
        # Keras' TensorFlow optimizer sums the gradients over all replicas before applying them.
        self.model.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables, strict=True))
        return self._sums(labels, probabilities, per_sample_loss)

    def _overflow_anywhere(self, gradients: list[tf.Tensor]) -> list[tf.Tensor]:
        """Every worker's gradients made non-finite where any worker's are, so that the LossScaleOptimizer skips
        the step on all of them: a worker skipping alone would leave out the all-reduce the others make."""
        overflowed = 1.0 - tf.cast(self.model.optimizer.check_finite(gradients), tf.float32)
        anywhere = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, overflowed) > 0
        return [None if g is None else tf.where(anywhere, tf.constant(np.nan, g.dtype), g) for g in gradients]

    def _replica_eval_step(self, images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        probabilities = self._probabilities(images, training=False)
        sums = self._sums(labels, probabilities, self._per_sample_loss(labels, probabilities))
        predicted = tf.argmax(probabilities, axis=-1, output_type=labels.dtype)
        classes = probabilities.shape[-1]
        confusion = tf.math.confusion_matrix(labels, predicted, num_classes=classes, dtype=tf.float32)
        return tf.concat([sums, tf.reshape(confusion, [-1])], axis=0)

    def _train_step_on_replicas(self, images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        return self._local(self.strategy.run(self._replica_train_step, args=(images, labels)))

    def _eval_step_on_replicas(self, images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        return self._local(self.strategy.run(self._replica_eval_step, args=(images, labels)))

    @tf.function
    def _train_steps(self, batches: tf.data.Iterator, steps: tf.Tensor) -> tf.Tensor:
        """`steps` train steps on the next batches of `batches`: the sums over this worker's slices.

        `steps` is a tensor, so one trace serves every count (an epoch's last, shorter execution too).
        """
        sums = tf.zeros(3)
        for _ in tf.range(steps):
            images, labels = next(batches)
            sums += self._train_step(images, labels)
        return sums

    @tf.function
    def _eval_batches(self, batches: tf.data.Dataset) -> tf.Tensor:
        """The eval sums and confusion matrix (flattened) of this worker's replica over all of `batches`."""
        classes = self.model.output_shape[-1]
        sums = tf.zeros(3 + classes * classes)
        for images, labels in batches:
            sums += self._eval_step(images, labels)
        return sums

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

    def evaluate(self, batches: tf.data.Dataset) -> tuple[dict[str, float], np.ndarray]:
        """Loss and accuracy over every worker's shard together (workers may hold different batch counts), and
        the confusion matrix: counts of samples by true class (rows) and predicted class (columns)."""
        classes = self.model.output_shape[-1]
        totals = self.sum_over_workers(self._eval_batches(batches))
        return self._metrics(totals), totals[3:].reshape(classes, classes).round().astype(int)

    def fit(
        self,
        train_batches: Callable[[int], tf.data.Dataset],
        steps_per_epoch: int,
        epochs: int,
        initial_epoch: int = 0,
        validation_batches: Callable[[], tf.data.Dataset] | None = None,
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
            batches = iter(train_batches(epoch))
            sums = tf.zeros(3)
            for first in range(0, steps_per_epoch, self.steps_per_execution):
                steps = min(self.steps_per_execution, steps_per_epoch - first)
                callback_list.on_train_batch_begin(first)
                sums += self._train_steps(batches, tf.constant(steps))
                callback_list.on_train_batch_end(first + steps - 1, self._metrics(sums.numpy()))
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
