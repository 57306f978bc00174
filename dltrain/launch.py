"""The driver: connect to Ray, check the request is feasible, run the job and keep its run folder current."""

import contextlib
import logging
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.actor import ActorHandle

from dltrain import cluster
from dltrain.config import worker_range
from dltrain.console import Console, EpochRelay
from dltrain.data import DATASETS
from dltrain.data import prepare as prepare_data
from dltrain.data.idx import IdxError
from dltrain.errors import DltrainError
from dltrain.frameworks import tensorflow as framework
from dltrain.logs import output_to
from dltrain.retrying_fs import unavailable_in
from dltrain.runs import FINAL_STATUS_WINDOWS, Run, RunStore, StatusPending
from dltrain.stage import remove_left_behind, temporary_name
from dltrain.storage import Storage, check_storage, open_storage

log = logging.getLogger("dltrain")


def _check_data(job: dict) -> None:
    """Locate (and download if needed) and verify the data set before any worker starts."""
    try:
        prepare_data(job["dataset"], job["storage"])
    except (OSError, IdxError, ValueError) as error:
        raise DltrainError(f"dataset: {error}") from error


def check_model(job: dict, driver_log: Path | None) -> int:
    """Build the model once so that a bad hyperparameter fails now; returns its parameter count."""
    data = DATASETS[job["dataset"]["name"]]
    # TensorFlow's device probing writes native lines to stderr: they belong in the driver log.
    with output_to(driver_log, fds=(2,)) if driver_log else contextlib.nullcontext():
        try:
            model = framework.build_model(job["model"], data.INPUT_SHAPE, len(data.CLASS_NAMES))
        except (TypeError, ValueError) as error:
            raise DltrainError(f"model: {error}") from error
    return model.count_params()


def fit(fittable: Any) -> Any:
    """Run `fittable.fit()` (a Ray trainer or a Tune tuner) in a thread, so that Ctrl-C reaches the driver as
    KeyboardInterrupt; returns what it returns.

    (In the main thread, Ray Train installs its own SIGINT handler, which ends the process with SystemExit.)
    Leaving `ray_connection` then stops the workers: the embedded Ray shuts down, and a cluster's Ray Train
    controller dies with the driver that owns it.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = fittable.fit()
        except BaseException as error:  # handed to the main thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name="dltrain-fit", daemon=True)
    thread.start()
    with _terminate_as_interrupt():
        while thread.is_alive():
            thread.join(timeout=0.5)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """In this block SIGTERM (what `ray job stop`, Kubernetes and systemd send) is a Ctrl-C: the run is STOPPED.

    (ray.init's own handler would exit the process at once, leaving the run RUNNING.)
    """
    if threading.current_thread() is not threading.main_thread():  # a sweep's trial: Tune stops it
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _describe(error: Exception) -> str:
    """One line for a failed fit(): the storage outage that ended it, else the first failing worker's own error
    where Ray wraps it, and the error line, not the header, of a traceback Ray passes on as text (Tune does, for a
    failure in its own handlers)."""
    if unavailable := unavailable_in(error):
        return str(unavailable)
    if isinstance(failure := getattr(error, "controller_failure", None), cluster.WorkersUnavailable):
        return str(failure)
    if isinstance(error, ray.train.WorkerGroupError) and error.worker_failures:
        rank, failure = min(error.worker_failures.items())
        lines = [line.strip() for line in str(failure).splitlines() if line.strip()]
        return f"worker {rank}: {lines[-1] if lines else type(failure).__name__}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[-1] if lines[0].startswith("Traceback") else lines[0]


def _open_storage(config: dict) -> Storage:
    """The storage `config` names, checked, with the final statuses this machine kept for it written."""
    try:
        check_storage(config)
        storage = open_storage(config)
        RunStore(storage).write_pending()
        return storage
    except (OSError, ValueError) as error:
        raise DltrainError(f"storage: {error}") from error


def train(job: dict, driver_log: Path | None = None) -> dict:
    """Run one training job, or a sweep of them, end to end (or resume one) and return its summary; its folder
    records everything.

    `driver_log`, a local file, receives the driver's log records and is kept as the folder's logs/driver.log.
    """
    remove_left_behind()  # by drivers and workers on this machine that were killed
    storage = _open_storage(job["storage"])
    run = _run_to_resume(job["resume"], storage) if job["resume"] else None
    if run is not None:
        status = run.status()["status"]
        saved = completed_config(run.config(), job)
        kind = "sweep" if saved["sweep"] else "run"
        if status == "COMPLETED":
            print(f"dltrain: {kind} {run.id} is already COMPLETED; nothing to resume -> {run.uri}", flush=True)
            return run.summary()
        # The saved config holds no credentials: the storage and Ray settings come from this command.
        job = saved | {"storage": job["storage"], "ray": job["ray"], "resume": run.id}
    kind = "sweep" if job["sweep"] else "run"
    _check_data(job)
    parameters = check_model(job, driver_log)
    if job["sweep"]:
        from dltrain import sweep  # sweep builds on this module: imported here, where it is needed

        sweep.check_trial_models(job, driver_log)
    if run is None:
        run = RunStore(storage).create(job, framework.versions())
        print(f"dltrain: {kind} {run.id} -> {run.uri}", flush=True)
    else:
        run.mark_resumed()
        print(f"dltrain: resuming {kind} {run.id} ({status}) from its latest checkpoint -> {run.uri}", flush=True)
    with _logging_to(driver_log, run):
        if job["sweep"]:
            return sweep.run_sweep(job, run, resuming=job["resume"] is not None)
        return _run(job, run, parameters)


def completed_config(saved: dict, defaults: dict) -> dict:
    """A run's saved config, with the keys dltrain has gained since it was saved taken from `defaults` (whose
    values for new keys keep the old behaviour); a model's keys only from defaults for the same builder."""
    completed = defaults | saved
    for section, keys in defaults.items():
        same_model = section != "model" or keys.get("_target_") == saved.get("model", {}).get("_target_")
        if isinstance(keys, dict) and isinstance(saved.get(section), dict) and same_model:
            completed[section] = keys | saved[section]
    return completed


def _run_to_resume(run_id: str, storage: Storage) -> Run:
    """The run `resume=` names; it continues from its latest checkpoint, in its own folder."""
    try:
        return RunStore(storage).get(run_id)
    except ValueError as error:
        raise DltrainError(f"resume={run_id}: {error}") from error


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


@contextlib.contextmanager
def recorded(run: Run) -> Iterator[None]:
    """Mark `run` STOPPED on Ctrl-C and FAILED on any error in this block, which then ends in one line."""
    try:
        yield
    except KeyboardInterrupt as interrupt:
        _final_status(run, "STOPPED", f"stopped by {interrupt}" if str(interrupt) else "interrupted by the user")
        print(f"dltrain: run {run.id} STOPPED; its checkpoints are in {run.uri}", flush=True)
        raise
    except StatusPending:
        raise
    except DltrainError as error:
        _final_status(run, "FAILED", str(error))
        raise
    except Exception as error:
        # The whole traceback, at INFO: for the driver log, while the console gets the one line below.
        log.info("run %s failed", run.id, exc_info=True)
        message = _describe(error)
        if unavailable_in(error):  # the status write waits for the storage too: say why before it does
            print(f"dltrain: run {run.id} FAILED: {message}; storing its status waits for the storage "
                  f"({FINAL_STATUS_WINDOWS} retry windows at most)", file=sys.stderr, flush=True)  # fmt: skip
        _final_status(run, "FAILED", message)
        raise DltrainError(f"run {run.id} FAILED: {message} (logs: {run.uri}/logs)") from error


def _final_status(run: Run, status: str, error: str) -> None:
    """Record how `run` ended; where the storage does not answer, say in one line where the status is kept."""
    try:
        run.set_status(status, error)
    except StatusPending as pending:
        print(f"dltrain: warning: {pending}", file=sys.stderr, flush=True)


def _run(job: dict, run: Run, parameters: int) -> dict:
    with recorded(run), cluster.ray_connection(job["ray"]["address"]):
        per_worker = cluster.worker_resources(job["resources"])
        cluster.check_paths_on_nodes(job["dataset"]["path"], run.storage)
        print(f"dltrain: {parameters:,} parameters; {_worker_count(job['resources'])} worker(s) x {per_worker}")
        with Console(job["trainer"]["progress"]) as console:
            relay = EpochRelay(console.handle, run.id, job["trainer"]["epochs"])
            progress_to = console.handle if console.shows_progress else None  # else rank 0 sends nothing
            summary = execute(job, run, per_worker, [relay], progress_to)
    print(
        f"dltrain: run {run.id} COMPLETED: test_accuracy {summary['test_accuracy']:.4f}  "
        f"test_loss {summary['test_loss']:.4f}  {summary['wall_seconds']:.0f}s -> {run.uri}",
        flush=True,
    )
    return summary


def _worker_count(resources: dict) -> str:
    """ "4", or "2-4" for an elastic run."""
    least, most = worker_range(resources)
    return f"{least}-{most}" if least < most else str(most)


def execute(
    job: dict, run: Run, per_worker: dict, callbacks: list[ray.train.UserCallback], console: ActorHandle | None
) -> dict:
    """Train `job` into `run` on the connected Ray, mark it RUNNING then COMPLETED, and return its summary;
    rank 0 sends its progress to the `console` queue actor, if any."""
    started = time.time()
    run.set_status("RUNNING")
    resources, wait = job["resources"], job["ray"]["wait_for_workers_s"]
    waiting = cluster.WaitForWorkers(wait, run.id, worker_range(resources)[0], per_worker)
    with run.heartbeat(), cluster.controller_settings(wait):
        fit(framework.make_trainer(job, run, per_worker, [*callbacks, waiting], console))
    summary = {
        "run_id": run.id,
        "status": "COMPLETED",
        **run.test_metrics(),
        "epochs": len(run.metrics()),
        "num_workers": job["resources"]["num_workers"],
        "wall_seconds": round(time.time() - started, 1),
    }
    run.write_summary(summary)
    run.set_status("COMPLETED")
    return summary
