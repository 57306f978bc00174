"""The lifecycle of one run on the connected Ray: the checks before it starts, RUNNING while Ray Train fits it,
then COMPLETED, or FAILED or STOPPED with its error in one line. Runs and sweeps' trials alike go through it."""

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray.train
from ray.actor import ActorHandle

from dltrain import cluster, frameworks, plots, ray_private, worker
from dltrain.config import to_mapping
from dltrain.data import describe
from dltrain.data.dataset import DataSet
from dltrain.data.idx import IdxError
from dltrain.errors import DltrainError
from dltrain.job import Job
from dltrain.logs import output_to
from dltrain.redaction import scrub_urls
from dltrain.retrying_fs import unavailable_in
from dltrain.run_context import RunContext
from dltrain.runs import FINAL_STATUS_WINDOWS, Run, RunStore, StatusPending
from dltrain.storage import Storage

log = logging.getLogger("dltrain")

INTERRUPT_WAIT_S = 120  # training in the driver stops at its next step: a step, or a validation pass, at most
# Ray Train's abort of a run withdraws its resource request at once, and stops its workers within about 2 s, which
# a driver that `ray job stop` kills 3 s after its SIGTERM cannot wait for: the abort goes on without the driver.
ABORT_WAIT_S = 1


def check_data(job: Job) -> DataSet:
    """Locate (download or prepare if needed) and verify the data set before any worker starts; say what was
    skipped or dropped."""
    try:
        data = describe(job.dataset, job.storage, job.trainer.seed)
    except (OSError, IdxError, ValueError) as error:
        raise DltrainError(f"dataset: {error}") from error
    for note in data.notes:
        print(f"dltrain: dataset: {note}", flush=True)
    if data.sizes["train"] < job.trainer.batch_size:
        raise DltrainError(f"dataset: {data.sizes['train']} training samples, fewer than one global batch "
                           f"(trainer.batch_size={job.trainer.batch_size})")  # fmt: skip
    return data


def create_run(storage: Storage, job: Job, record: dict, run_id: str | None = None) -> Run:
    """The one place a run folder is made, for runs and sweeps' trials alike: its config, its provenance `record`
    (provenance.py) and the versions of its framework (a new id unless `run_id` is given)."""
    return RunStore(storage).create(to_mapping(job), worker.versions(job.framework.name), run_id, record)


def check_model(job: Job, data: DataSet, driver_log: Path | None) -> int:
    """Build the model for the data set `data` once, so that a bad hyperparameter fails now; returns its parameter
    count. A driver that does not train builds it on the CPU, leaving the GPUs to its workers."""
    # TensorFlow's device probing writes native lines to stderr: they belong in the driver log.
    with output_to(driver_log, fds=(2,)) if driver_log else contextlib.nullcontext():
        if not cluster.trains_in_driver(job):
            frameworks.backend(job.framework.name).use_cpu_only()
        try:
            model = worker.build_model(job.model, data.input_shape, len(data.class_names), job.storage)
        except (TypeError, ValueError) as error:
            raise DltrainError(f"model: {error}") from error
    return model.count_params()


def fit(fittable: Any, abort_on_interrupt: bool = False) -> Any:
    """Run `fittable.fit()` (a Ray trainer or a Tune tuner) in a thread, so that Ctrl-C reaches the driver as
    KeyboardInterrupt; returns what it returns.

    (In the main thread, Ray Train installs its own SIGINT handler, which ends the process with SystemExit.)
    On a Ray that outlives the driver (a cluster, a notebook's own Ray: `abort_on_interrupt`), a Ray trainer's
    run is then aborted as that handler would: its workers stop, and Ray Train withdraws the resources it asked
    the cluster for. An embedded Ray ends with the driver, and all of it with it. A `fittable` that trains in this
    process (DriverTrainer) is told to stop instead, and awaited for up to INTERRUPT_WAIT_S, so that nothing
    writes to the run after it. (A Tune tuner's trials stop with the driver's Ray connection.)
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = fittable.fit()
        except BaseException as error:  # handed to the main thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name="dltrain-fit", daemon=True)
    thread.start()
    with terminate_as_interrupt():
        try:
            while thread.is_alive():
                thread.join(timeout=0.5)
        except KeyboardInterrupt:
            if isinstance(fittable, worker.DriverTrainer):
                fittable.interrupt()
                thread.join(timeout=INTERRUPT_WAIT_S)
            elif abort_on_interrupt and (controller := ray_private.train_controller(thread)):
                ray.wait([controller.abort.remote()], timeout=ABORT_WAIT_S)
            raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
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


@contextlib.contextmanager
def recorded(run: Run, scrub: Callable[[str], str] = scrub_urls) -> Iterator[None]:
    """Mark `run` STOPPED on Ctrl-C and FAILED on any error in this block, which then ends in one line, with
    `scrub`'s secrets (the run's redacted values: Scrubber) hidden in it."""
    try:
        yield
    except KeyboardInterrupt as interrupt:
        _final_status(run, "STOPPED", f"stopped by {interrupt}" if str(interrupt) else "interrupted by the user")
        print(f"dltrain: run {run.id} STOPPED; its checkpoints are in {run.uri}", flush=True)
        raise
    except StatusPending:
        raise
    except DltrainError as error:
        message = scrub(str(error))
        _final_status(run, "FAILED", message)
        raise DltrainError(message) from None
    except Exception as error:
        # The whole traceback, at INFO: for the driver log, while the console gets the one line below.
        log.info("run %s failed", run.id, exc_info=True)
        message = scrub(_describe(error))
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


def execute(job: Job, run: Run, fittable: Any, abort_on_interrupt: bool = False) -> dict:
    """Train `job` into `run` with `fittable` (`ray_trainer` or a DriverTrainer), mark it RUNNING then COMPLETED
    (or STOPPED, when `dltrain runs stop` asked it to stop), and return its summary; `abort_on_interrupt`: fit's."""
    started = time.time()
    run.set_status("RUNNING")
    with run.heartbeat(), cluster.controller_settings(job.ray.wait_for_workers_s):
        fit(fittable, abort_on_interrupt)
    if (request := run.stop_request()) and not run.has_final_model():
        epochs = len(run.metrics())
        message = f"stopped after epoch {epochs}, as {request['by']} asked at {request['requested']}"
        _final_status(run, "STOPPED", message)
        return {"run_id": run.id, "status": "STOPPED", "epochs": epochs, "error": message}
    history, confusion = run.metrics(), run.confusion_matrix()
    summary = {
        "run_id": run.id,
        "status": "COMPLETED",
        **run.test_metrics(),
        "test_accuracy_per_class": plots.per_class_accuracy(confusion["matrix"], confusion["class_names"]),
        "epochs": len(history),
        "num_workers": job.resources.num_workers,
        "wall_seconds": round(time.time() - started, 1),
    }
    _plot(run, job, history, confusion)
    run.clear_stop_request()  # one that came after the last epoch's check: the run completed all the same
    run.write_summary(summary)
    run.set_status("COMPLETED")
    return summary


def ray_trainer(
    job: Job,
    data: DataSet,
    run: Run,
    per_worker: dict,
    callbacks: list[ray.train.UserCallback],
    console: ActorHandle | None,
) -> Any:
    """Ray Train workers of `per_worker` resources for `job` on the data set `data`, on the connected Ray, which
    fail the run once they cannot be placed for ray.wait_for_workers_s; rank 0 sends its progress to the `console`
    queue actor, if any."""
    waiting = cluster.WaitForWorkers(job.ray.wait_for_workers_s, run.id, job.resources.worker_range[0], per_worker)
    context = RunContext(run.id, data, console)
    return worker.make_trainer(job, context, run, per_worker, [*callbacks, waiting])


def _plot(run: Run, job: Job, history: list[dict], confusion: dict) -> None:
    """plots/curves.png and plots/confusion_matrix.png of a completed run."""
    model = f"{job.model.short_name} on {job.dataset.name}"
    run.write_plot("curves.png", plots.curves({run.id: history}, f"run {run.id}: {model}"))
    title = f"run {run.id}: test set, {sum(map(sum, confusion['matrix'])):,} samples"
    run.write_plot("confusion_matrix.png", plots.confusion_matrix(confusion["matrix"], confusion["class_names"], title))
