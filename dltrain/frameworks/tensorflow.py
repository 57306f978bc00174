"""The TensorFlow backend: Ray's TensorflowTrainer (which gives every worker its TF_CONFIG), one
MultiWorkerMirroredStrategy replica per worker, and the train/eval steps as `tf.function`s.

Each replica computes the loss of its slice scaled by the GLOBAL batch; Keras' TensorFlow optimizer sums the
gradients over all replicas before applying them. With mixed_float16 a LossScaleOptimizer skips a step whose
gradients overflow on any worker, on every worker at once.
"""

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import ray.train
import tensorflow as tf
from ray.train.tensorflow import TensorflowTrainer

from dltrain.data.pipeline import Batch
from dltrain.engine.loop import SUMS

NAME = "tensorflow"


def ray_trainer(train_loop_per_worker, train_loop_config: dict, **settings: Any) -> TensorflowTrainer:
    """Ray's trainer of this framework: every worker gets TF_CONFIG, the worker list of its strategy."""
    return TensorflowTrainer(train_loop_per_worker, train_loop_config=train_loop_config, **settings)


def worker_environment(use_gpu: bool, deterministic: bool) -> dict[str, str]:
    """Environment variables a worker process needs before TensorFlow starts: none beyond Keras' backend."""
    return {}


def use_cpu_only() -> None:
    """This process computes on the CPU only (a driver that checks a model, leaving the GPUs to its workers)."""
    with contextlib.suppress(RuntimeError):  # the GPUs were in use already: nothing to leave
        tf.config.set_visible_devices([], "GPU")


def resolve_jit_compile(setting: str | bool, use_gpu: bool, deterministic: bool) -> bool:
    """`trainer.jit_compile`: `auto` is XLA on a GPU worker (as Keras decides), but not on a CPU (measured 8x
    slower there) nor with deterministic ops, not all of which XLA supports; true and false are taken as given."""
    if setting == "auto":
        return use_gpu and not deterministic
    if not isinstance(setting, bool):
        raise ValueError(f"jit_compile must be auto, true or false, got {setting!r}")
    return setting


class Training:
    """TensorFlow's side of one worker's training among `workers`: its strategy, where the model is built."""

    def __init__(self, workers: int, deterministic: bool, use_gpu: bool):
        self.deterministic = deterministic
        # Whether this worker computes on a GPU: Ray may give it one that TensorFlow cannot use (then the CPU).
        self.on_gpu = use_gpu and bool(tf.config.list_physical_devices("GPU"))
        if workers == 1:
            os.environ.pop("TF_CONFIG", None)  # a lone worker needs no gRPC server: nothing listens on the network
        if deterministic:
            tf.config.experimental.enable_op_determinism()  # with the seed: the same losses, run after run (on CPU)
        self.strategy = tf.distribute.MultiWorkerMirroredStrategy()
        if self.strategy.num_replicas_in_sync != workers:
            replicas = self.strategy.num_replicas_in_sync
            raise RuntimeError(f"expected one replica per worker, got {replicas} for {workers}")

    def scope(self) -> contextlib.AbstractContextManager:
        """Where the model and its optimizer are built: the strategy's scope."""
        return self.strategy.scope()

    def steps(self, model: keras.Model, global_batch_size: int, jit_compile: str | bool) -> "TensorflowSteps":
        """The train and eval steps of `model` (built in `scope()` and compiled), with XLA as `jit_compile`
        (trainer.jit_compile) says."""
        jit = resolve_jit_compile(jit_compile, self.on_gpu, self.deterministic)
        return TensorflowSteps(model, self.strategy, global_batch_size, jit)


class TensorflowSteps:
    """Train and evaluate `model` (built and compiled inside `strategy.scope()`) with its compiled optimizer: the
    `Steps` of engine/loop.py.

    `train` runs its steps in one `tf.function` call, a `tf.range` loop over the input iterator. With
    `jit_compile` XLA compiles each step (the replica's forward and backward pass, the gradient all-reduce and
    the update) and each eval step, as Keras compiles its step; the loop over the input stays outside, as the
    iterator has no XLA kernel. XLA compiles collectives on GPUs only: on CPUs it fails with two or more workers.
    """

    def __init__(
        self, model: keras.Model, strategy: tf.distribute.Strategy, global_batch_size: int, jit_compile: bool = False
    ):
        if model.optimizer is None:
            raise ValueError("compile the model with an optimizer inside strategy.scope() first")
        self.model, self.strategy, self.global_batch_size = model, strategy, global_batch_size
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

    def _dataset(self, batches: Iterator[Batch]) -> tf.data.Dataset:
        """NumPy batches through tf.data."""
        shape = (None, *self.model.input_shape[1:])
        signature = (tf.TensorSpec(shape, tf.float32), tf.TensorSpec((None,), tf.int32))
        return tf.data.Dataset.from_generator(lambda: batches, output_signature=signature).prefetch(1)

    def input(self, batches: Iterator[Batch]) -> tf.data.Iterator:
        """NumPy batches as the iterator the train steps' loop takes its next batches from."""
        return iter(self._dataset(batches))

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
        sums = tf.zeros(SUMS)
        for _ in tf.range(steps):
            images, labels = next(batches)
            sums += self._train_step(images, labels)
        return sums

    @tf.function
    def _eval_batches(self, batches: tf.data.Dataset) -> tf.Tensor:
        """The eval sums and confusion matrix (flattened) of this worker's replica over all of `batches`."""
        classes = self.model.output_shape[-1]
        sums = tf.zeros(SUMS + classes * classes)
        for images, labels in batches:
            sums += self._eval_step(images, labels)
        return sums

    def _local(self, per_replica: tf.Tensor) -> tf.Tensor:
        return tf.add_n(self.strategy.experimental_local_results(per_replica))

    def train(self, inputs: tf.data.Iterator, steps: int) -> np.ndarray:
        """`steps` train steps in one call: the sums over this worker's slices."""
        return self._train_steps(inputs, tf.constant(steps)).numpy()

    def evaluate(self, batches: Iterator[Batch]) -> np.ndarray:
        """The eval sums and confusion matrix (flattened) of this worker's `batches`."""
        return self._eval_batches(self._dataset(batches)).numpy()

    def sum_over_workers(self, values: np.ndarray | list[float]) -> np.ndarray:
        """All-reduce (sum) a small vector over every worker. A collective: all workers must call it."""
        per_replica = self.strategy.run(tf.identity, args=(tf.convert_to_tensor(values, tf.float32),))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()

    def sync_model(self) -> None:
        """Nothing to do: the steps update the model's own variables."""


def versions() -> dict[str, str]:
    """The framework and library versions a run records."""
    return {"framework": NAME, "tensorflow": tf.__version__, "keras": keras.__version__, "ray": ray.__version__}
