"""TensorFlow backend: Ray's TensorflowTrainer, MultiWorkerMirroredStrategy and the worker entry point.

Ray Train sets TF_CONFIG on every worker; each worker builds the strategy, the data and the model, restores
the latest checkpoint if Ray restarted it, and runs dltrain's DistributedLoop. Rank 0 writes the checkpoints,
TensorBoard events and the final model; every worker keeps its own log in the run folder.
"""

import contextlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import keras
import ray.train
import tensorflow as tf
from hydra.utils import instantiate
from ray.actor import ActorHandle
from ray.train.tensorflow import TensorflowTrainer

from dltrain.config import import_target, worker_range
from dltrain.data import DATASETS
from dltrain.data import prepare as prepare_data
from dltrain.data.pipeline import Split, eval_batches, steps_per_epoch, train_batches, train_validation_split
from dltrain.engine.loop import DistributedLoop
from dltrain.logs import output_to
from dltrain.progress import ProgressSender
from dltrain.retrying_fs import StorageUnavailable, unavailable_in
from dltrain.runs import CONFUSION_MATRIX_FILE, TEST_METRICS_FILE, Run
from dltrain.stage import stage as worker_stage
from dltrain.storage import open_storage

_STATE_FILE = "state.json"
_MODEL_FILE = "model.keras"


def build_model(model_config: dict, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Call the model builder named by `_target_` with the other keys as keyword arguments."""
    builder = import_target(model_config["_target_"])
    hyperparameters = {key: value for key, value in model_config.items() if key != "_target_"}
    return builder(input_shape=input_shape, num_classes=num_classes, **hyperparameters)


def learning_rate(trainer: dict, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """`trainer.learning_rate` held constant, or cosine-decayed to 0 over all `trainer.epochs` of training.

    A schedule is a function of the optimizer's step counter, which the checkpoints keep: a resumed run continues it.
    """
    if trainer["lr_schedule"] == "constant":
        return trainer["learning_rate"]
    return keras.optimizers.schedules.CosineDecay(trainer["learning_rate"], trainer["epochs"] * steps_per_epoch)


def compile_model(model: keras.Model, trainer: dict, steps_per_epoch: int) -> None:
    """Compile `model` with `trainer.optimizer` at `trainer.learning_rate` under `trainer.lr_schedule`."""
    optimizer = keras.optimizers.get(
        {"class_name": trainer["optimizer"], "config": {"learning_rate": learning_rate(trainer, steps_per_epoch)}}
    )
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def _restore(model: keras.Model) -> int:
    """Load the latest checkpoint Ray hands this worker, if any; returns the number of epochs it completed."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        model.optimizer.build(model.trainable_variables)
        model.load_weights(Path(folder) / _MODEL_FILE)
        return json.loads((Path(folder) / _STATE_FILE).read_text())["epochs_done"]


class _RayReport(keras.callbacks.Callback):
    """Each epoch: history row and checkpoint (rank 0), upload events and logs, and report the metrics to Ray.

    The row gets `checkpoint_seconds`: the time all of that took rank 0 (the history row, the model save, Ray's
    persistence of the checkpoint into the run folder, the TensorBoard and log uploads), so users see what
    checkpointing costs next to the epoch's `seconds`.
    """

    def __init__(self, run: Run, stage: Path, rank: int, log_file: Path):
        super().__init__()
        self.run, self.stage, self.rank, self.log_file = run, stage, rank, log_file

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        started = time.perf_counter()
        # NaN until measured: a worker that dies before the row's update below leaves it "not measured".
        metrics = {"epoch": epoch + 1, **(logs or {}), "checkpoint_seconds": math.nan}
        checkpoint = None
        if self.rank == 0:
            # The history row is stored before its checkpoint, so no checkpointed epoch lacks one.
            self.run.record_epoch(metrics)
            folder = self.stage / "checkpoint"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            self.model.save(folder / _MODEL_FILE)
            (folder / _STATE_FILE).write_text(json.dumps({"epochs_done": epoch + 1}))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
            self.run.storage.upload(self.stage / "tensorboard", f"{self.run.path}/tensorboard")
        self.run.storage.upload(self.log_file.parent, f"{self.run.path}/logs")
        ray.train.report(
            {key: value for key, value in metrics.items() if key != "checkpoint_seconds"},
            checkpoint=checkpoint,
            checkpoint_dir_name=f"checkpoints/epoch-{epoch + 1:04d}",
        )
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


def _progress_sender(job: dict, run: Run, steps: int) -> ProgressSender:
    """Rank 0's progress messages to the driver's console queue; sending never waits for the queue."""
    console = job["console"]
    return ProgressSender(
        lambda message: console.put_nowait.remote(message | {"run_id": run.id}),
        job["trainer"]["epochs"],
        steps,
        job["trainer"]["batch_size"],
    )


def _train(job: dict, run: Run, stage: Path, log_file: Path) -> None:
    context = ray.train.get_context()
    rank, workers = context.get_world_rank(), context.get_world_size()
    if workers == 1:
        os.environ.pop("TF_CONFIG", None)  # a lone worker needs no gRPC server: nothing listens on the network
    trainer, dataset = job["trainer"], job["dataset"]
    keras.utils.set_random_seed(trainer["seed"])
    if trainer["deterministic"]:
        tf.config.experimental.enable_op_determinism()  # with the seed: the same losses, run after run (on CPU)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    if strategy.num_replicas_in_sync != workers:
        raise RuntimeError(f"expected one replica per worker, got {strategy.num_replicas_in_sync} for {workers}")

    data = DATASETS[dataset["name"]]
    (images, labels), test = data.load(prepare_data(dataset, job["storage"]))
    train, validation = train_validation_split(
        images, labels, dataset["validation_split"], trainer["seed"], dataset["limit"]
    )
    global_batch = trainer["batch_size"]
    worker_batch = global_batch // workers
    steps = steps_per_epoch(len(train.images), global_batch)

    with strategy.scope():
        model = build_model(job["model"], data.INPUT_SHAPE, len(data.CLASS_NAMES))
        compile_model(model, trainer, steps)
        initial_epoch = _restore(model)

    callbacks = [instantiate(callback) for callback in trainer["callbacks"].values()]
    if rank == 0:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(stage / "tensorboard")))
    if rank == 0 and job["console"] is not None:
        callbacks.append(_progress_sender(job, run, steps))
    callbacks.append(_RayReport(run, stage, rank, log_file))
    stop = _StopOnRequest(run, rank)
    callbacks.append(stop)

    loop = DistributedLoop(model, strategy, global_batch)
    print(f"worker {rank}/{workers}: {len(train.images)} train, {len(validation.images)} validation samples; "
          f"starting at epoch {initial_epoch + 1}", flush=True)  # fmt: skip
    loop.fit(
        lambda epoch: train_batches(
            train, global_batch, trainer["seed"], epoch, workers, rank, dataset["flip"], dataset["shift"]
        ),
        steps,
        trainer["epochs"],
        initial_epoch,
        (lambda: eval_batches(validation, worker_batch, workers, rank)) if len(validation.images) else None,
        callbacks,
    )
    if loop.sum_over_workers([float(stop.requested)])[0] > 0:
        return  # stopped on request: no test evaluation and no final model; resume= continues the run
    test_metrics, confusion = loop.evaluate(eval_batches(Split(*test), worker_batch, workers, rank))
    if rank == 0:
        (stage / "model").mkdir()
        model.save(stage / "model" / _MODEL_FILE)
        confusion_matrix = {"class_names": list(data.CLASS_NAMES), "matrix": confusion.tolist()}
        (stage / "model" / CONFUSION_MATRIX_FILE).write_text(json.dumps(confusion_matrix))
        test_metrics = {f"test_{name}": value for name, value in test_metrics.items()}
        (stage / "model" / TEST_METRICS_FILE).write_text(json.dumps(test_metrics))
        run.storage.upload(stage / "model", f"{run.path}/model")


def train_loop_per_worker(job: dict) -> None:
    """What every Ray Train worker runs: train `job`, logging to the run folder's logs/."""
    run = Run(open_storage(job["storage"]), job["run_id"])
    rank = ray.train.get_context().get_world_rank()
    with worker_stage(f"{run.id}-worker{rank}") as stage:
        log_file = stage / "logs" / f"worker-{rank}-pid{os.getpid()}.log"
        outage = False
        try:
            with output_to(log_file):
                _train(job, run, stage, log_file)
        except StorageUnavailable:
            outage = True
            raise
        finally:
            _upload_log(run, log_file, outage)


def _upload_log(run: Run, log_file: Path, after_outage: bool) -> None:
    """Copy this worker's log into the run folder; after an outage, once, not through another retry window."""
    if not after_outage:
        run.storage.upload(log_file.parent, f"{run.path}/logs")
        return
    with contextlib.suppress(OSError):
        run.storage.with_retry_seconds(0).upload(log_file.parent, f"{run.path}/logs")


class _StorageOutageEndsRun(ray.train.UserCallback):
    """In Ray Train's controller: a worker that failed because the storage stayed unreachable through its retry
    window ends the run, with that error, instead of restarting the workers (which would only wait again)."""

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        for error in worker_exceptions.values():
            if unavailable := unavailable_in(error):
                raise unavailable


def make_trainer(
    job: dict,
    run: Run,
    resources_per_worker: dict,
    callbacks: list[ray.train.UserCallback],
    console: ActorHandle | None = None,
) -> TensorflowTrainer:
    """Ray's TensorflowTrainer for `job`, persisting checkpoints into the run folder; rank 0 sends its progress
    to the `console` queue actor, if any."""
    resources = job["resources"]
    least, most = worker_range(resources)
    return TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config={**job, "run_id": run.id, "console": console},
        scaling_config=ray.train.ScalingConfig(
            num_workers=(least, most) if least < most else most,  # elastic: Ray Train takes what it can place
            use_gpu=resources["use_gpu"],
            resources_per_worker=resources_per_worker,
        ),
        run_config=ray.train.RunConfig(
            name=run.id,
            storage_path=run.storage.root,
            storage_filesystem=run.storage.filesystem,
            failure_config=ray.train.FailureConfig(max_failures=job["trainer"]["max_failures"]),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job["trainer"]["keep_checkpoints"]),
            callbacks=[*callbacks, _StorageOutageEndsRun()],
            worker_runtime_env={"env_vars": {"KERAS_BACKEND": "tensorflow"}},
        ),
    )


def versions() -> dict[str, str]:
    """The framework and library versions a run records."""
    import dltrain

    return {
        "framework": "tensorflow",
        "dltrain": dltrain.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "ray": ray.__version__,
    }
