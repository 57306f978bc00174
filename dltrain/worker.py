"""What every Ray Train worker runs, whatever the framework: the worker entry point, its callbacks, the checkpoint
layout in the run folder, and training in the driver's own process (DriverTrainer).

A framework's backend (dltrain/frameworks/) forms the workers' group (Ray's trainer class) and owns the steps;
each worker builds the data and the model, restores the latest checkpoint if Ray restarted it, and runs dltrain's
DistributedLoop. Rank 0 writes the checkpoints, TensorBoard events and the final model; every worker keeps its
own log in the run folder.
"""

import contextlib
import itertools
import json
import logging
import math
import os
import queue
import shutil
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import keras
import ray.train
from hydra.utils import instantiate

from dltrain.config import import_target, to_mapping
from dltrain.console import epoch_message, sender
from dltrain.data import batches as data_batches
from dltrain.data.dataset import DataSet
from dltrain.data.pipeline import steps_per_epoch
from dltrain.engine.loop import DistributedLoop
from dltrain.engine.precision import dtype_policy
from dltrain.errors import DltrainError
from dltrain.frameworks import backend, use_keras_backend
from dltrain.job import Job, ModelConfig, StorageConfig, TrainerConfig
from dltrain.logs import output_to, store_logs
from dltrain.model_weights import local_weights
from dltrain.progress import ProgressSender
from dltrain.redaction import Scrubber
from dltrain.retrying_fs import StorageUnavailable, unavailable_in
from dltrain.run_context import InDriver, RunContext
from dltrain.runs import CONFUSION_MATRIX_FILE, MODEL_FILE, TEST_METRICS_FILE, Run
from dltrain.stage import stage as worker_stage
from dltrain.storage import open_storage
from dltrain.tensorboard import EpochSummaries

log = logging.getLogger("dltrain")

_STATE_FILE = "state.json"
_CHECKPOINTS = "checkpoints"  # the run folder's, one folder per epoch: epoch-0001, ...


def build_model(
    model_config: ModelConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    storage_config: StorageConfig | None = None,
) -> keras.Model:
    """Call the model builder named by `_target_` with the hyperparameters as keyword arguments; a `weights` key
    that names a run, a registered model or an S3 file (in the storage `storage_config` names) is handed over as a
    local copy."""
    builder = import_target(model_config.target)
    hyperparameters = dict(model_config.hyperparameters)
    with local_weights(hyperparameters.get("weights"), storage_config) as weights:
        if "weights" in hyperparameters:
            hyperparameters["weights"] = weights
        return builder(input_shape=input_shape, num_classes=num_classes, **hyperparameters)


def learning_rate(
    trainer: TrainerConfig, steps_per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """`trainer.learning_rate` held constant, or cosine-decayed to 0 over all `trainer.epochs` of training.

    A schedule is a function of the optimizer's step counter, which the checkpoints keep: a resumed run continues it.
    """
    if trainer.lr_schedule == "constant":
        return trainer.learning_rate
    return keras.optimizers.schedules.CosineDecay(trainer.learning_rate, trainer.epochs * steps_per_epoch)


def compile_model(model: keras.Model, trainer: TrainerConfig, steps_per_epoch: int) -> None:
    """Compile `model` with `trainer.optimizer` at `trainer.learning_rate` under `trainer.lr_schedule`."""
    optimizer = keras.optimizers.get(
        {"class_name": trainer.optimizer, "config": {"learning_rate": learning_rate(trainer, steps_per_epoch)}}
    )
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def _checkpoint_name(epoch: int) -> str:
    """The checkpoint of `epoch` (from 1) in the run folder, in Ray Train's layout."""
    return f"{_CHECKPOINTS}/epoch-{epoch:04d}"


def _restore(model: keras.Model, run: Run, stage: Path, rank: int) -> int:
    """Load the newest whole checkpoint in the run folder, if any; returns the number of epochs it completed.

    The run folder, not Ray's record of its checkpoints, is the truth: a run may have trained in the driver's
    process (which keeps no such record) and then on Ray Train workers, or the other way round. A checkpoint that
    does not load (a copy cut short when its writer died: Ray copies a checkpoint's files side by side, so its
    state file can be whole and its model not) is passed over for the one before.
    """
    checkpoints = f"{run.path}/{_CHECKPOINTS}"
    for name in reversed(run.storage.list_folders(checkpoints)):
        if not run.storage.exists(f"{checkpoints}/{name}/{_STATE_FILE}"):
            continue
        folder = stage / "restored" / name
        try:
            run.storage.download(f"{checkpoints}/{name}", folder)
            model.optimizer.build(model.trainable_variables)
            model.load_weights(folder / MODEL_FILE)
            return json.loads((folder / _STATE_FILE).read_text())["epochs_done"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            print(f"worker {rank}: checkpoint {name} does not load ({error}); trying the one before", flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


class _PublishToRay:
    """A Ray Train worker's epoch report: Ray persists the checkpoint into the run folder, its controller
    registers it (deleting the oldest beyond trainer.keep_checkpoints) and relays the metrics to the console."""

    def __call__(self, metrics: dict, checkpoint: Path | None, epoch: int) -> None:
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(checkpoint) if checkpoint else None,
            checkpoint_dir_name=_checkpoint_name(epoch),
        )


class _PublishInDriver:
    """The epoch report of a run in the driver's process (Ray Train's local mode, which persists nothing): the
    checkpoint is copied into the run folder in Ray's layout, its state file last, as the mark of a whole copy;
    checkpoints beyond trainer.keep_checkpoints are deleted; then the epoch line goes to the console."""

    def __init__(self, run: Run, keep: int, console: queue.Queue, epochs: int):
        self.run, self.keep, self.console, self.epochs = run, keep, console, epochs

    def __call__(self, metrics: dict, checkpoint: Path, epoch: int) -> None:
        path, storage = f"{self.run.path}/{_checkpoint_name(epoch)}", self.run.storage
        for name in (MODEL_FILE, _STATE_FILE):  # each written whole (Storage.write_bytes)
            storage.write_bytes(f"{path}/{name}", (checkpoint / name).read_bytes())
        checkpoints = f"{self.run.path}/{_CHECKPOINTS}"
        for name in storage.list_folders(checkpoints)[: -self.keep]:
            storage.filesystem.delete_dir(f"{checkpoints}/{name}")
        self.console.put_nowait(epoch_message(metrics, self.run.id, self.epochs))


class _EpochReport(keras.callbacks.Callback):
    """Each epoch: history row and checkpoint (rank 0), upload events and logs, and `publish` the metrics and the
    checkpoint (to Ray Train, or into the run folder from the driver's process).

    The row gets `checkpoint_seconds`: the time all of that took rank 0 (the history row, the model save, the
    checkpoint's copy into the run folder, the TensorBoard and log uploads), so users see what checkpointing
    costs next to the epoch's `seconds`.
    """

    def __init__(
        self,
        run: Run,
        stage: Path,
        rank: int,
        log_file: Path,
        publish: Callable[[dict, Path | None, int], None],
        scrub: Scrubber,
    ):
        super().__init__()
        self.run, self.stage, self.rank, self.log_file, self.publish = run, stage, rank, log_file, publish
        self.scrub = scrub

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        started = time.perf_counter()
        # NaN until measured: a worker that dies before the row's update below leaves it "not measured".
        metrics = {"epoch": epoch + 1, **(logs or {}), "checkpoint_seconds": math.nan}
        folder = None
        if self.rank == 0:
            # The history row is stored before its checkpoint, so no checkpointed epoch lacks one.
            self.run.record_epoch(metrics)
            folder = self.stage / "checkpoint"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            self.model.save(folder / MODEL_FILE)
            (folder / _STATE_FILE).write_text(json.dumps({"epochs_done": epoch + 1}))
            self.run.storage.upload(self.stage / "tensorboard", f"{self.run.path}/tensorboard")
        store_logs(self.run.storage, self.log_file.parent, f"{self.run.path}/logs", self.scrub)
        self.publish({key: value for key, value in metrics.items() if key != "checkpoint_seconds"}, folder, epoch + 1)
        if self.rank == 0:
            self.run.record_epoch(metrics | {"checkpoint_seconds": time.perf_counter() - started})


class _StopOnRequest(keras.callbacks.Callback):
    """At each epoch end rank 0 looks for the run's stop request (`dltrain runs stop`); finding one, it stops
    training, which the loop makes every worker do after this epoch (whose checkpoint is kept)."""

    def __init__(self, run: Run, rank: int):
        super().__init__()
        self.run, self.rank, self.requested = run, rank, False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.rank == 0 and self.run.stop_request() is not None:
            print(f"worker 0: stop requested; stopping after epoch {epoch + 1}", flush=True)
            self.model.stop_training = self.requested = True


def _progress_sender(job: Job, context: RunContext, steps: int) -> ProgressSender:
    """Rank 0's progress messages to the driver's console queue; sending never waits for the queue."""
    send = sender(context.console)
    return ProgressSender(
        lambda message: send(message | {"run_id": context.run_id}), job.trainer.epochs, steps, job.trainer.batch_size
    )


def _train(job: Job, context: RunContext, run: Run, stage: Path, log_file: Path) -> None:
    ray_context = ray.train.get_context()
    rank, workers = ray_context.get_world_rank(), ray_context.get_world_size()
    trainer = job.trainer
    keras.utils.set_random_seed(trainer.seed)
    framework = backend(job.framework.name).Training(workers, trainer.deterministic, job.resources.use_gpu)

    data = context.data
    batches = data_batches(job.dataset, data, job.storage, trainer.seed)
    sizes = batches.sizes
    global_batch = trainer.batch_size
    worker_batch = global_batch // workers
    steps = steps_per_epoch(sizes["train"], global_batch)

    with framework.scope(), dtype_policy(trainer.precision):
        model = build_model(job.model, data.input_shape, len(data.class_names), job.storage)
        compile_model(model, trainer, steps)
        initial_epoch = _restore(model, run, stage, rank)

    callbacks = [instantiate(callback) for callback in trainer.callbacks.values()]
    if rank == 0:
        callbacks.append(EpochSummaries(stage / "tensorboard"))
    if rank == 0 and context.console is not None:
        callbacks.append(_progress_sender(job, context, steps))
    in_driver = context.in_driver
    if in_driver is None:
        publish = _PublishToRay()
    else:
        callbacks.append(_Interrupt(in_driver.interrupted))
        publish = _PublishInDriver(run, trainer.keep_checkpoints, in_driver.console, trainer.epochs)
    callbacks.append(_EpochReport(run, stage, rank, log_file, publish, Scrubber(to_mapping(job))))
    stop = _StopOnRequest(run, rank)
    callbacks.append(stop)

    model_steps = framework.steps(model, global_batch, trainer.jit_compile)
    loop = DistributedLoop(model, model_steps, global_batch, trainer.steps_per_execution)
    if loop.sum_over_workers([initial_epoch])[0] != initial_epoch * workers:
        raise RuntimeError(f"worker {rank} restored epoch {initial_epoch}, and the other workers did not")
    print(f"worker {rank}/{workers}: {sizes['train']} train, {sizes['validation']} validation samples; "
          f"starting at epoch {initial_epoch + 1}", flush=True)  # fmt: skip
    loop.fit(
        lambda epoch: batches.train(global_batch, trainer.seed, epoch, workers, rank),
        steps,
        trainer.epochs,
        initial_epoch,
        (lambda: batches.evaluation("validation", worker_batch, workers, rank)) if sizes["validation"] else None,
        callbacks,
    )
    if loop.sum_over_workers([float(stop.requested)])[0] > 0:
        return  # stopped on request: no test evaluation and no final model; resume= continues the run
    test_metrics, confusion = loop.evaluate(batches.evaluation("test", worker_batch, workers, rank))
    if rank == 0:
        (stage / "model").mkdir()
        model.save(stage / "model" / MODEL_FILE)
        confusion_matrix = {"class_names": list(data.class_names), "matrix": confusion.tolist()}
        (stage / "model" / CONFUSION_MATRIX_FILE).write_text(json.dumps(confusion_matrix))
        test_metrics = {f"test_{name}": value for name, value in test_metrics.items()}
        (stage / "model" / TEST_METRICS_FILE).write_text(json.dumps(test_metrics))
        run.storage.upload(stage / "model", f"{run.path}/model")


def train_loop_per_worker(config: dict) -> None:
    """What every Ray Train worker runs (or the driver, in local mode): train config's `job` in its `context`,
    logging to the run folder's logs/. In the driver, whose stdout is the console's, only Python's sys.stdout and
    native stderr go there."""
    job, context = config["job"], config["context"]
    use_keras_backend(job.framework.name)  # as set for the process: checked, and TensorFlow kept out of JAX's
    run = Run(open_storage(job.storage), context.run_id)
    rank = ray.train.get_context().get_world_rank()
    with worker_stage(f"{run.id}-worker{rank}") as stage:
        in_driver = context.in_driver is not None
        # A Ray Train worker restarted after a failure is a new process; a restart in the driver keeps its pid.
        restart = f"-restart{context.in_driver.restarts}" if in_driver and context.in_driver.restarts else ""
        log_file = stage / "logs" / f"worker-{rank}-pid{os.getpid()}{restart}.log"
        outage = False
        try:
            with output_to(log_file, fds=(2,) if in_driver else (1, 2), sys_stdout=in_driver):
                _train(job, context, run, stage, log_file)
        except StorageUnavailable:
            outage = True
            raise
        finally:
            _upload_log(run, log_file, outage, Scrubber(to_mapping(job)))


def _upload_log(run: Run, log_file: Path, after_outage: bool, scrub: Scrubber) -> None:
    """Copy this worker's log into the run folder, with the run's secrets hidden; after an outage, once, not
    through another retry window."""
    if not after_outage:
        store_logs(run.storage, log_file.parent, f"{run.path}/logs", scrub)
        return
    with contextlib.suppress(OSError):
        store_logs(run.storage.with_retry_seconds(0), log_file.parent, f"{run.path}/logs", scrub)


class _StorageOutageEndsRun(ray.train.UserCallback):
    """In Ray Train's controller: a worker that failed because the storage stayed unreachable through its retry
    window ends the run, with that error, instead of restarting the workers (which would only wait again)."""

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        for error in worker_exceptions.values():
            if unavailable := unavailable_in(error):
                raise unavailable


def _run_config(job: Job, run: Run, callbacks: list[ray.train.UserCallback]) -> ray.train.RunConfig:
    """Ray Train's settings for `job`'s workers, each started with Keras on the job's framework."""
    trainer, framework = job.trainer, job.framework.name
    environment = backend(framework).worker_environment(job.resources.use_gpu, trainer.deterministic)
    return ray.train.RunConfig(
        name=run.id,
        storage_path=run.storage.root,
        storage_filesystem=run.storage.filesystem,
        failure_config=ray.train.FailureConfig(max_failures=trainer.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=trainer.keep_checkpoints),
        callbacks=[*callbacks, _StorageOutageEndsRun()],
        worker_runtime_env={"env_vars": {"KERAS_BACKEND": framework, **environment}},
    )


def make_trainer(
    job: Job, context: RunContext, run: Run, resources_per_worker: dict, callbacks: list[ray.train.UserCallback]
):
    """Ray's trainer for `job` on its framework in its `context`, persisting checkpoints into the run folder; rank
    0 sends its progress to the context's console queue actor, if any."""
    least, most = job.resources.worker_range
    return backend(job.framework.name).ray_trainer(
        train_loop_per_worker,
        train_loop_config={"job": job, "context": context},
        scaling_config=ray.train.ScalingConfig(
            num_workers=(least, most) if least < most else most,  # elastic: Ray Train takes what it can place
            use_gpu=job.resources.use_gpu,
            resources_per_worker=resources_per_worker,
        ),
        run_config=_run_config(job, run, callbacks),
    )


class _Interrupted(Exception):
    """Training in the driver's process stopped at a step's end because the driver was interrupted."""


class _Interrupt(keras.callbacks.Callback):
    """In the driver's process: end training at the next step once `interrupted` is set (Ctrl-C, SIGTERM)."""

    def __init__(self, interrupted: threading.Event):
        super().__init__()
        self.interrupted = interrupted

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.interrupted.is_set():
            raise _Interrupted("interrupted")


class DriverTrainer:
    """Trains `job` in this process with Ray Train's local mode (`ScalingConfig(num_workers=0)`): the same
    worker function and `ray.train` API, no Ray processes. Checkpoints go into the run folder as a Ray Train
    worker's would (Ray's local mode keeps them in memory only). As Ray Train would restart a failed worker, a
    failure restarts training from the newest checkpoint, up to trainer.max_failures times.
    """

    def __init__(self, job: Job, data: DataSet, run: Run, console: queue.Queue, progress: bool):
        self.in_driver = InDriver(console)
        self.framework = backend(job.framework.name)
        # As a Ray Train worker starts with them: JAX reads its settings when it first uses a device.
        os.environ.update(self.framework.worker_environment(job.resources.use_gpu, job.trainer.deterministic))
        context = RunContext(run.id, data, console if progress else None, self.in_driver)
        self.config = {"job": job, "context": context}
        self.run, self.max_failures = run, job.trainer.max_failures

    def interrupt(self) -> None:
        """Stop training at the end of its current step (from another thread); fit() then raises."""
        self.in_driver.interrupted.set()

    def fit(self) -> ray.train.Result:
        """Train to the end, or raise the error that ended training."""
        # Ray Train says at INFO that it runs in local mode, and logs every report: not for the console.
        logging.getLogger("ray.train").setLevel(logging.WARNING)
        for failures in itertools.count(1):
            try:
                return self.framework.ray_trainer(
                    train_loop_per_worker,
                    train_loop_config=self.config,
                    scaling_config=ray.train.ScalingConfig(num_workers=0),
                    run_config=ray.train.RunConfig(name=self.run.id),
                ).fit()
            except (_Interrupted, DltrainError):
                raise
            except Exception as error:
                if unavailable_in(error) or self.in_driver.interrupted.is_set():
                    raise
                first_line = next(iter(str(error).strip().splitlines()), "")
                cause = f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
                if failures > self.max_failures:
                    raise RuntimeError(f"worker 0: {cause}") from error
                log.warning("worker 0 failed; restarting from the newest checkpoint", exc_info=True)
                allowed = f"trainer.max_failures={self.max_failures}"
                print(f"dltrain: worker 0 failed ({cause}); restarting from the newest checkpoint (failure "
                      f"{failures} of {allowed})", file=sys.stderr, flush=True)  # fmt: skip
                self.in_driver.restarts = failures


def versions(framework: str) -> dict[str, str]:
    """The framework and library versions a run on `framework` records."""
    import dltrain

    return {**backend(framework).versions(), "dltrain": dltrain.__version__}
