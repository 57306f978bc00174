"""The driver's entry: open the storage, start a run or a sweep (or resume one) in its folder, and keep the
driver's log there. A run's own lifecycle is in lifecycle.py, a sweep's in the sweep package."""

import contextlib
import logging
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dltrain import capacity, cluster, config, formatting, lifecycle
from dltrain.console import Console, EpochRelay
from dltrain.data.dataset import DataSet
from dltrain.errors import DltrainError
from dltrain.frameworks import tensorflow as framework
from dltrain.job import Job, StorageConfig
from dltrain.provenance import provenance
from dltrain.registry import Registry
from dltrain.runs import Run, RunStore
from dltrain.stage import remove_left_behind, temporary_name
from dltrain.storage import Storage, check_storage, open_storage
from dltrain.sweep.driver import run_sweep
from dltrain.sweep.trial import check_trial_models


def _open_storage(config: StorageConfig) -> Storage:
    """The storage `config` names, checked, with the final statuses this machine kept for it written."""
    try:
        check_storage(config)
        storage = open_storage(config)
        RunStore(storage).write_pending()
        return storage
    except (OSError, ValueError) as error:
        raise DltrainError(f"storage: {error}") from error


def train(job: Job, driver_log: Path | None = None, overrides: list[str] | None = None) -> dict:
    """Run one training job, or a sweep of them, end to end (or resume one, or rerun one's config) and return its
    summary; its folder records everything.

    `driver_log`, a local file, receives the driver's log records and is kept as the folder's logs/driver.log.
    `overrides`, the command line's key=value arguments, go into the run's provenance.json.
    """
    remove_left_behind()  # by drivers and workers on this machine that were killed
    storage = _open_storage(job.storage)
    if job.rerun:
        _check_rerun_overrides(job.rerun, overrides or [])
        original = _run_named("rerun", job.rerun, storage)
        # A new run of the original's saved config; the storage and Ray settings come from this command.
        job = config.from_saved(original.config(), job, resume=None, rerun=original.id)
    run = _run_named("resume", job.resume, storage) if job.resume else None
    if run is not None:
        status = run.status()["status"]
        # The saved config holds no credentials: the storage and Ray settings come from this command.
        saved = config.from_saved(run.config(), job, resume=run.id, rerun=None)
        kind = "sweep" if saved.sweep else "run"
        if status == "COMPLETED":
            print(f"dltrain: {kind} {run.id} is already COMPLETED; nothing to resume -> {run.uri}", flush=True)
            return run.summary()
        job = saved
    kind = "sweep" if job.sweep else "run"
    data = lifecycle.check_data(job)  # for the workers, beside the job: what the driver found, not config
    parameters = lifecycle.check_model(job, data, driver_log)
    if job.sweep:
        check_trial_models(job, data, driver_log)
    if run is None:
        record = provenance(data, overrides or [], job.rerun)
        run = RunStore(storage).create(config.to_mapping(job), framework.versions(), provenance=record)
        rerun = f" (a rerun of {job.rerun})" if job.rerun else ""
        print(f"dltrain: {kind} {run.id}{rerun} -> {run.uri}", flush=True)
    else:
        run.clear_stop_request()
        run.mark_resumed()
        print(f"dltrain: resuming {kind} {run.id} ({status}) from its latest checkpoint -> {run.uri}", flush=True)
    with _logging_to(driver_log, run):
        if job.sweep:
            return run_sweep(job, data, run, resuming=job.resume is not None)
        return _run(job, data, run, parameters)


def _check_rerun_overrides(run_id: str, overrides: list[str]) -> None:
    """A rerun repeats the saved config: an override of anything but storage.* and ray.* would be ignored."""
    for override in overrides:
        key = override.partition("=")[0].lstrip("+~")
        if key not in ("rerun", "storage") and not key.startswith(("storage.", "ray.", "hydra.")):
            raise DltrainError(
                f"rerun={run_id} repeats that run's saved config: {override} cannot change it "
                "(only storage.* and ray.* can be set; start a new run to change others)"
            )


def _run_named(key: str, run_id: str, storage: Storage) -> Run:
    """The run `resume=` or `rerun=` names (for rerun=, also a registered model's NAME:N or NAME@alias)."""
    try:
        return RunStore(storage).get(Registry(storage).run_id_of(run_id) if key == "rerun" else run_id)
    except ValueError as error:
        raise DltrainError(f"{key}={run_id}: {error}") from error


@contextlib.contextmanager
def _logging_to(driver_log: Path | None, run: Run) -> Iterator[None]:
    """Log records of every library at INFO and above go to `driver_log`, then into the run folder; the local
    file is removed once stored there, else kept under a name with the run id."""
    driver_log = driver_log or Path(tempfile.mkstemp(prefix=temporary_name("driver"), suffix=".log")[1])
    handler = logging.FileHandler(driver_log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        try:
            run.storage.write_bytes(f"{run.path}/logs/driver.log", driver_log.read_bytes())
            driver_log.unlink()
        except OSError as error:  # an outage outlasted the retries: the log stays here, and the run's error shows
            kept = driver_log.rename(driver_log.with_name(f"dltrain-{run.id}-driver.log"))
            print(f"dltrain: the driver log stays in {kept}: {error}", file=sys.stderr, flush=True)


def _run(job: Job, data: DataSet, run: Run, parameters: int) -> dict:
    if cluster.trains_in_driver(job):
        with lifecycle.recorded(run), Console(job.trainer.progress, in_process=True) as console:
            print(f"dltrain: {parameters:,} parameters; 1 worker, in this process (resources.local_mode)", flush=True)
            trainer = framework.DriverTrainer(job, data, run, console.handle, console.shows_progress)
            summary = lifecycle.execute(job, run, trainer)
    else:
        with lifecycle.recorded(run), cluster.ray_connection(job.ray.address) as embedded:
            autoscaling = capacity.autoscaled(embedded)
            per_worker = capacity.worker_resources(job.resources, autoscaling)
            with lifecycle.terminate_as_interrupt():
                capacity.ensure_capacity(job.resources, per_worker, job.ray.wait_for_workers_s, autoscaling)
            cluster.check_paths_on_nodes(data.shared_path, run.storage)
            print(f"dltrain: {parameters:,} parameters; {formatting.workers(*job.resources.worker_range)} worker(s) "
                  f"x {per_worker}")  # fmt: skip
            with Console(job.trainer.progress) as console:
                relay = EpochRelay(console.handle, run.id, job.trainer.epochs)
                progress_to = console.handle if console.shows_progress else None  # else rank 0 sends nothing
                trainer = lifecycle.ray_trainer(job, data, run, per_worker, [relay], progress_to)
                summary = lifecycle.execute(job, run, trainer)
    if summary["status"] == "STOPPED":
        print(f"dltrain: run {run.id} STOPPED: {summary['error']}; resume={run.id} continues it -> {run.uri}")
        return summary
    print(
        f"dltrain: run {run.id} COMPLETED: test_accuracy {summary['test_accuracy']:.4f}  "
        f"test_loss {summary['test_loss']:.4f}  {summary['wall_seconds']:.0f}s -> {run.uri}",
        flush=True,
    )
    return summary
