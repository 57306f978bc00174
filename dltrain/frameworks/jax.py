"""The JAX backend: Ray Train's DataParallelTrainer with a process group of dltrain's own, and the train/eval
steps as `jax.jit` functions over one global batch.

The workers form one JAX process group (`jax.distributed.initialize`, the coordinator on rank 0's node address),
one device each (a GPU Ray gave the worker, or the CPU). Each worker feeds its slice of the global batch; the
step is one `jax.jit` over the global batch, sharded across the workers, with the weights replicated: XLA sums
the gradients over the workers (and takes batch-norm statistics over the whole global batch). The model's state
lives in JAX arrays between epoch ends, as Keras' own JAX trainer keeps it.

(Ray 2.60's JaxTrainer forms no group on CPU workers, and with GPUs points every worker at GPU 0; its own
coordinator listens on every interface. JAX's preemption service, which would catch SIGTERM, stays off.)
"""

import contextlib
import os
import socket
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np
import ray
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ray.train.backend import Backend, BackendConfig
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from dltrain.data.pipeline import Batch
from dltrain.engine.loop import SUMS

NAME = "jax"
# JAX warns at every fork once it has started; Ray starts its processes with fork + exec at once, which is safe.
warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
_AXIS = "workers"  # the mesh axis the global batch is split along: one device per worker
SHUTDOWN_TIMEOUT_S = 30  # a worker waits this long at most for the others to leave the process group


def _join(coordinator: str, workers: int, rank: int) -> None:
    """In a worker: join the JAX process group of `workers` processes that rank 0's `coordinator` leads."""
    jax.config.update("jax_enable_preemption_service", False)
    jax.distributed.initialize(
        coordinator, workers, rank, coordinator_bind_address=coordinator, shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S
    )


def _coordinator_address() -> str:
    """This worker's node address and a free port on it, for the process group's coordinator."""
    address = ray.util.get_node_ip_address()
    with socket.socket() as probe:
        probe.bind((address, 0))
        return f"{address}:{probe.getsockname()[1]}"


def _leave() -> None:
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


class _ProcessGroupBackend(Backend):
    def on_start(self, worker_group: Any, backend_config: BackendConfig) -> None:
        workers = len(worker_group)
        if workers == 1:
            return  # a lone worker needs no group: nothing listens on the network
        coordinator = worker_group.execute_single(0, _coordinator_address)
        joined = [worker_group.execute_single_async(rank, _join, coordinator, workers, rank) for rank in range(workers)]
        ray.get(joined)

    def on_shutdown(self, worker_group: Any, backend_config: BackendConfig) -> None:
        worker_group.execute(_leave)


@dataclass
class ProcessGroup(BackendConfig):
    """Ray Train's backend config that makes the workers one JAX process group."""

    @property
    def backend_cls(self) -> type[Backend]:
        return _ProcessGroupBackend


def ray_trainer(train_loop_per_worker, train_loop_config: dict, **settings: Any) -> DataParallelTrainer:
    """Ray's trainer of this framework: the workers are one JAX process group."""
    return DataParallelTrainer(
        train_loop_per_worker, train_loop_config=train_loop_config, backend_config=ProcessGroup(), **settings
    )


def worker_environment(use_gpu: bool, deterministic: bool) -> dict[str, str]:
    """Environment variables a worker process needs before JAX starts: CPU workers do not look for GPUs, and
    deterministic runs use XLA's deterministic GPU kernels (CPUs are deterministic anyway)."""
    environment = {} if use_gpu else {"JAX_PLATFORMS": "cpu"}
    if deterministic:
        environment["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_gpu_deterministic_ops=true".strip()
    return environment


def use_cpu_only() -> None:
    """This process computes on the CPU only (a driver that checks a model, leaving the GPUs to its workers: JAX
    would take most of a GPU's memory on its first use)."""
    jax.config.update("jax_platforms", "cpu")


class Training:
    """JAX's side of one worker's training among `workers`: the mesh of one device per worker."""

    def __init__(self, workers: int, deterministic: bool, use_gpu: bool):
        # The first device of every process: a process sees one GPU (Ray's CUDA_VISIBLE_DEVICES) or the CPU.
        devices = [min(process, key=lambda device: device.id) for process in _by_process(jax.devices())]
        if len(devices) != workers:
            raise RuntimeError(f"expected one JAX process per worker, got {len(devices)} for {workers}")
        self.mesh = Mesh(np.array(devices), (_AXIS,))

    def scope(self) -> contextlib.AbstractContextManager:
        """Where the model is built: anywhere (its state goes to the mesh when training starts)."""
        return contextlib.nullcontext()

    def steps(self, model: keras.Model, global_batch_size: int, jit_compile: str | bool) -> "JaxSteps":
        """The train and eval steps of the compiled `model`: JAX always compiles them with XLA (the config refuses
        trainer.jit_compile=false)."""
        return JaxSteps(model, self.mesh, global_batch_size)


def _by_process(devices: list) -> list[list]:
    processes: dict[int, list] = {}
    for device in devices:
        processes.setdefault(device.process_index, []).append(device)
    return [processes[index] for index in sorted(processes)]


class JaxSteps:
    """Train and evaluate the compiled `model` on the `mesh` of the workers' devices: the `Steps` of
    engine/loop.py. A train call dispatches its steps without waiting for them, and waits once at its end."""

    def __init__(self, model: keras.Model, mesh: Mesh, global_batch_size: int):
        if model.optimizer is None:
            raise ValueError("compile the model with an optimizer first")
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        self.model, self.global_batch_size, self.workers = model, global_batch_size, mesh.size
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.split = NamedSharding(mesh, PartitionSpec(_AXIS))
        self._per_sample_loss = keras.losses.SparseCategoricalCrossentropy(reduction=None)
        self._state: tuple | None = None  # (trainable, non-trainable, optimizer variables) while training
        self._train_step = jax.jit(self._step, donate_argnums=(0, 1))
        self._eval_step = jax.jit(self._eval)

    def _variables(self) -> tuple[list, list, list]:
        return self.model.trainable_variables, self.model.non_trainable_variables, self.model.optimizer.variables

    def _global(self, value: Any, sharding: NamedSharding) -> jax.Array:
        """A global array from this worker's part of it (replicated: the whole value, the same on every worker)."""
        return jax.make_array_from_process_local_data(sharding, np.asarray(value))

    def _loss(
        self, trainable: list, non_trainable: list, optimizer_variables: list, images: jax.Array, labels: jax.Array
    ) -> tuple[jax.Array, tuple]:
        probabilities, non_trainable, losses = self.model.stateless_call(
            trainable, non_trainable, images, training=True, return_losses=True
        )
        # Under a mixed policy the layers compute in float16 or bfloat16: the loss and metrics in float32.
        probabilities = probabilities.astype(jnp.float32)
        per_sample_loss = self._per_sample_loss(labels, probabilities)
        loss = jnp.sum(per_sample_loss) / self.global_batch_size
        if losses:
            loss += sum(term.astype(jnp.float32) for term in losses)
        # A LossScaleOptimizer (mixed_float16) multiplies the loss by its scale; stateless_apply divides back.
        mapping = list(zip(self.model.optimizer.variables, optimizer_variables, strict=True))
        with keras.StatelessScope(state_mapping=mapping):
            scaled_loss = self.model.optimizer.scale_loss(loss)
        return scaled_loss, (probabilities, non_trainable, per_sample_loss)

    def _step(self, state: tuple, sums: jax.Array, images: jax.Array, labels: jax.Array) -> tuple[tuple, jax.Array]:
        """One step on the global batch; `sums` gains each worker's (LOSS, CORRECT, COUNT) in its row."""
        trainable, non_trainable, optimizer_variables = state
        gradient = jax.value_and_grad(self._loss, has_aux=True)
        (_, (probabilities, non_trainable, per_sample_loss)), gradients = gradient(
            trainable, non_trainable, optimizer_variables, images, labels
        )
        trainable, optimizer_variables = self.model.optimizer.stateless_apply(optimizer_variables, gradients, trainable)
        correct = (jnp.argmax(probabilities, axis=-1) == labels).astype(jnp.float32)
        count = jnp.ones_like(correct)
        # Each worker's slice is a contiguous block of the global batch: row w sums worker w's samples.
        step_sums = jnp.stack(
            [values.reshape(self.workers, -1).sum(1) for values in (per_sample_loss, correct, count)], 1
        )
        sums = jax.lax.with_sharding_constraint(sums + step_sums, self.split)
        return (trainable, non_trainable, optimizer_variables), sums

    def input(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """The NumPy batches as they are: each step puts its batch on the mesh."""
        return batches

    def train(self, inputs: Iterator[Batch], steps: int) -> np.ndarray:
        """`steps` train steps, dispatched one after another, then one wait: this worker's sums."""
        if self._state is None:
            self._state = tuple([self._global(v.value, self.replicated) for v in group] for group in self._variables())
        sums = self._global(np.zeros((1, SUMS), np.float32), self.split)
        for _ in range(steps):
            images, labels = next(inputs)
            self._state, sums = self._train_step(
                self._state, sums, self._global(images, self.split), self._global(labels, self.split)
            )
        return np.asarray(sums.addressable_data(0))[0]

    def sync_model(self) -> None:
        """Write the trained state into the model's variables (this worker's replica of it)."""
        if self._state is None:
            return
        for group, values in zip(self._variables(), self._state, strict=True):
            for variable, value in zip(group, values, strict=True):
                variable.assign(value.addressable_data(0))
        self._state = None

    def _eval(self, trainable: list, non_trainable: list, images: jax.Array, labels: jax.Array) -> jax.Array:
        probabilities, _ = self.model.stateless_call(trainable, non_trainable, images, training=False)
        probabilities = probabilities.astype(jnp.float32)
        predicted = jnp.argmax(probabilities, axis=-1)
        classes = probabilities.shape[-1]
        confusion = jnp.zeros((classes, classes), jnp.float32).at[labels, predicted].add(1.0)
        sums = [jnp.sum(self._per_sample_loss(labels, probabilities)), jnp.sum(predicted == labels), labels.shape[0]]
        return jnp.concatenate([jnp.array(sums, jnp.float32), confusion.ravel()])

    def evaluate(self, batches: Iterator[Batch]) -> np.ndarray:
        """The eval sums and confusion matrix (flattened) of this worker's `batches`, on its own device alone."""
        self.sync_model()
        trainable = [variable.value for variable in self.model.trainable_variables]
        non_trainable = [variable.value for variable in self.model.non_trainable_variables]
        classes = self.model.output_shape[-1]
        sums = jnp.zeros(SUMS + classes * classes)
        for images, labels in batches:
            sums += self._eval_step(trainable, non_trainable, images, labels)
        return np.asarray(sums)

    def sum_over_workers(self, values: np.ndarray | list[float]) -> np.ndarray:
        """All-reduce (sum) a small vector over every worker. A collective: all workers must call it."""
        values = np.asarray(values, np.float32)
        if self.workers == 1:
            return values
        return np.asarray(multihost_utils.process_allgather(values)).sum(axis=0)


def versions() -> dict[str, str]:
    """The framework and library versions a run records."""
    import jaxlib

    return {"framework": NAME, "jax": jax.__version__, "jaxlib": jaxlib.__version__, "keras": keras.__version__,
            "ray": ray.__version__}  # fmt: skip
