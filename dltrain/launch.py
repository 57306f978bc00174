"""The driver's entry: open the storage, start a run or a sweep (or resume one) in its folder, and keep the
driver's log there. A run's own lifecycle is in lifecycle.py, a sweep's in the sweep package."""

import contextlib
import logging
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from dltrain import capacity, cluster, config, formatting, lifecycle, search_space, tracking, worker
from dltrain.console import Console, EpochRelay
from dltrain.data.dataset import DataSet
from dltrain.errors import DltrainError
from dltrain.job import Job, StorageConfig
from dltrain.logs import scrubbing
from dltrain.provenance import command_line, provenance
from dltrain.redaction import Scrubber, redacted_paths
from dltrain.references import named_run
from dltrain.runs import Run, RunStore, check_not_live
from dltrain.stage import remove_left_behind, temporary_name
from dltrain.storage import Storage, open_checked
from dltrain.sweep.driver import run_sweep
from dltrain.sweep.trial import check_trial_models


def _open_storage(settings: StorageConfig) -> Storage:
    """The storage `settings` name, checked, with the final statuses this machine kept for it written."""
    storage = open_checked(settings)
    try:
        RunStore(storage).write_pending()
    except (OSError, ValueError) as error:
        raise DltrainError(f"storage: {error}") from error
    return storage


def train(job: Job, driver_log: Path | None = None, overrides: list[str] | None = None) -> dict:
    """Run one training job, or a sweep of them, end to end (or resume one, or rerun one's config) and return its
    summary; its folder records everything.

    `driver_log`, a local file, receives the driver's log records and is kept as the folder's logs/driver.log.
    `overrides`, the command line's key=value arguments, go into the run's provenance.json.
    """
    remove_left_behind()  # by drivers and workers on this machine that were killed
    storage = _open_storage(job.storage)
    if job.rerun:
        original = _run_named("rerun", job.rerun, storage)
        _check_rerun_overrides(job.rerun, overrides or [], redacted_paths(original.config()))
        # A new run of the original's saved config; the storage and Ray settings come from this command.
        job = _repeatable("rerun", job.rerun, original.config(), job, resume=None, rerun=original.id)
    run = _run_named("resume", job.resume, storage) if job.resume else None
    if run is not None:
        record = run.status()
        status = record["status"]
        if status == "COMPLETED":
            kind = "sweep" if config.saved_overview(run.config()).sweep else "run"
            print(f"dltrain: {kind} {run.id} is already COMPLETED; nothing to resume -> {run.uri}", flush=True)
            return run.summary()
        # The saved config holds no credentials: the storage and Ray settings come from this command.
        job = _repeatable("resume", run.id, run.config(), job, resume=run.id, rerun=None)
        try:
            check_not_live(run.id, record)  # at once, before the checks; claiming it below makes sure
        except ValueError as error:
            raise DltrainError(f"resume={run.id}: {error}") from None
    kind = "sweep" if job.sweep else "run"
    data = lifecycle.check_data(job)  # for the workers, beside the job: what the driver found, not config
    parameters = lifecycle.check_model(job, data, driver_log)
    if job.sweep:
        check_trial_models(job, data, driver_log)
    scrub = Scrubber(config.to_mapping(job))  # what the saved config hides, kept out of the logs and errors too
    if run is None:
        run = lifecycle.create_run(storage, job, provenance(data, command_line(overrides or [], scrub), job.rerun))
        rerun = f" (a rerun of {job.rerun})" if job.rerun else ""
        print(f"dltrain: {kind} {run.id}{rerun} -> {run.uri}", flush=True)
    else:
        _claim(run)
        run.clear_stop_request()
        print(f"dltrain: resuming {kind} {run.id} ({status}) from its latest checkpoint -> {run.uri}", flush=True)
    # PENDING while Ray starts, then RUNNING: a live driver; mirrored to MLflow where tracking.mlflow_uri says
    with run.heartbeat(), _logging_to(driver_log, run, scrub), tracking.mirrored(job, run) as on_epoch:
        if job.sweep:
            return run_sweep(job, data, run, resuming=job.resume is not None, on_epoch=on_epoch)
        return _run(job, data, run, parameters, scrub, on_epoch)


def _claim(run: Run) -> None:
    """Become the driver of `run`, to resume it; DltrainError in one line where it is not free (Run.claim)."""
    try:
        run.claim()
    except ValueError as error:
        raise DltrainError(f"resume={run.id}: {error}") from None


def _check_rerun_overrides(run_id: str, overrides: list[str], redacted: list[str]) -> None:
    """A rerun repeats the saved config: an override of anything but storage.*, ray.* and the `redacted` keys (whose
    values the saved config does not hold) would be ignored."""
    for override in overrides:
        key = override.partition("=")[0].lstrip("+~")
        gives_secret = any(path == key or path.startswith(f"{key}.") for path in redacted)
        if key not in ("rerun", "storage") and not key.startswith(("storage.", "ray.", "hydra.")) and not gives_secret:
            raise DltrainError(
                f"rerun={run_id} repeats that run's saved config: {override} cannot change it "
                "(only storage.* and ray.* can be set; start a new run to change others)"
            )


def _repeatable(key: str, run_id: str, saved: dict, current: Job, **changes: str | None) -> Job:
    """The Job of `saved`, a run's saved config (config.from_saved), with the values its redaction hid (***) taken
    from this command's job `current`, and checked as a command's config is (a config.yaml may have been edited
    since); DltrainError naming the keys this command does not give, or what the check refuses."""
    restored, missing, given = saved, [], config.to_mapping(current)
    for path in redacted_paths(saved):
        value = given
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None or redacted_paths({"value": value}):
            missing.append(path)
        else:
            restored = search_space.assign(restored, {path: value})
    if missing:
        raise DltrainError(
            f"{key}={run_id}: the saved config holds {', '.join(missing)} redacted (***): give "
            f"{'it' if len(missing) == 1 else 'them'} on this command line, as when the run started (a callback "
            "whole: '+trainer.callbacks.NAME={_target_: ..., ...}')"
        )
    try:
        return config.from_saved(restored, current, **changes)
    except DltrainError as error:
        raise DltrainError(f"{key}={run_id}: its saved config: {error}") from None


def _run_named(key: str, run_id: str, storage: Storage) -> Run:
    """The run `resume=` or `rerun=` names (for rerun=, also a registered model's NAME:N or NAME@alias)."""
    try:
        return named_run(storage, run_id) if key == "rerun" else RunStore(storage).get(run_id)
    except ValueError as error:
        raise DltrainError(f"{key}={run_id}: {error}") from error


@contextlib.contextmanager
def _logging_to(driver_log: Path | None, run: Run, scrub: Scrubber) -> Iterator[None]:
    """Log records of every library at INFO and above go to `driver_log`, then into the run folder, with `scrub`'s
    secrets hidden (in the console's records too); the local file is removed once stored there, else kept under a
    name with the run id."""
    driver_log = driver_log or Path(tempfile.mkstemp(prefix=temporary_name("driver"), suffix=".log")[1])
    handler = logging.FileHandler(driver_log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with scrubbing(scrub):
            yield
    finally:
        root.removeHandler(handler)
        handler.close()
        try:
            # Native output (TensorFlow's) reaches the file without a log record: scrubbed here too.
            run.storage.write_bytes(f"{run.path}/logs/driver.log", scrub.bytes(driver_log.read_bytes()))
            driver_log.unlink()
        except OSError as error:  # an outage outlasted the retries: the log stays here, and the run's error shows
            kept = driver_log.rename(driver_log.with_name(f"dltrain-{run.id}-driver.log"))
            print(f"dltrain: the driver log stays in {kept}: {error}", file=sys.stderr, flush=True)


def _run(
    job: Job, data: DataSet, run: Run, parameters: int, scrub: Scrubber, on_epoch: Callable[[str], None] | None
) -> dict:
    """Train one run, in this process or on Ray Train workers; the console calls `on_epoch` at each epoch."""
    if cluster.trains_in_driver(job):
        with (
            lifecycle.recorded(run, scrub),
            Console(job.trainer.progress, in_process=True, on_epoch=on_epoch) as console,
        ):
            print(f"dltrain: {parameters:,} parameters; 1 worker, in this process (resources.local_mode)", flush=True)
            trainer = worker.DriverTrainer(job, data, run, console.handle, console.shows_progress)
            summary = lifecycle.execute(job, run, trainer)
    else:
        with lifecycle.recorded(run, scrub), cluster.ray_connection(job.ray.address) as embedded:
            autoscaling = capacity.autoscaled(embedded)
            per_worker = capacity.worker_resources(job.resources, autoscaling)
            with lifecycle.terminate_as_interrupt():
                capacity.ensure_capacity(job.resources, per_worker, job.ray.wait_for_workers_s, autoscaling)
            cluster.check_paths_on_nodes(data.shared_path, run.storage)
            print(f"dltrain: {parameters:,} parameters; {formatting.workers(*job.resources.worker_range)} worker(s) "
                  f"x {per_worker}")  # fmt: skip
            with Console(job.trainer.progress, on_epoch=on_epoch) as console:
                relay = EpochRelay(console.handle, run.id, job.trainer.epochs)
                progress_to = console.handle if console.shows_progress else None  # else rank 0 sends nothing
                trainer = lifecycle.ray_trainer(job, data, run, per_worker, [relay], progress_to)
                summary = lifecycle.execute(job, run, trainer, abort_on_interrupt=not embedded)
    if summary["status"] == "STOPPED":
        print(f"dltrain: run {run.id} STOPPED: {summary['error']}; resume={run.id} continues it -> {run.uri}")
        return summary
    print(
        f"dltrain: run {run.id} COMPLETED: test_accuracy {summary['test_accuracy']:.4f}  "
        f"test_loss {summary['test_loss']:.4f}  {summary['wall_seconds']:.0f}s -> {run.uri}",
        flush=True,
    )
    return summary
