"""A sweep's trials: each a whole dltrain run in its own folder, <storage>/<sweep id>-<trial id>/, trained by a
function in its Tune actor; the checks of their models before the sweep starts, and how they ended after it."""

from pathlib import Path

from ray import tune
from ray.actor import ActorHandle
from ray.tune.integration.ray_train import TuneReportCallback

from dltrain import config, lifecycle
from dltrain.console import EpochRelay
from dltrain.data.dataset import DataSet
from dltrain.errors import DltrainError
from dltrain.job import Job, SweepConfig
from dltrain.provenance import provenance
from dltrain.redaction import Scrubber
from dltrain.runs import ENDED, Run, RunStore
from dltrain.storage import open_storage
from dltrain.sweep.tune_settings import dimensions


def trial_run_id(sweep_id: str, trial_id: str) -> str:
    """A trial's run id: the sweep's id and Tune's trial id, so the runs of a sweep sort together."""
    return f"{sweep_id}-{trial_id}"


def trial_runs(sweep: Run) -> list[Run]:
    """The runs of the sweep's trials so far, oldest first."""
    return [run for run in RunStore(sweep.storage).list() if run.id.startswith(f"{sweep.id}-")]


def check_trial_models(job: Job, data: DataSet, driver_log: Path | None) -> None:
    """Build the model for every value the space may give a model key, so a bad one fails before Ray starts."""
    for path, dimension in dimensions(job.sweep).items():
        if path.startswith("model."):
            for value in dimension.candidates():
                try:
                    lifecycle.check_model(config.trial_job(job, {path: value}), data, driver_log)
                except DltrainError as error:
                    raise DltrainError(f"sweep.space.{path}: a trial would get {path}={value!r}: {error}") from None


def run_trial(params: dict, job: Job, data: DataSet, sweep_id: str, per_worker: dict, console: ActorHandle) -> None:
    """One trial, in its Tune actor: a dltrain run of `job` with the trial's values (resumed if it exists, and
    not trained again if it has COMPLETED), ending with a report of its last epoch and test metrics. Its rank 0
    sends its progress, and Ray Train's controller each of its epochs, to the sweep's `console`.

    Ray Train reports each epoch to Tune as it ends. A trial resumed after its last checkpoint trains no epoch,
    and Tune fails a sweep whose trial ends without reporting its metric: the last report covers that trial.
    """
    trial_job = config.trial_job(job, params)
    if trial_job.dataset != job.dataset:  # its own input shape, classes and splits, not the driver's
        data = lifecycle.check_data(trial_job)
    store = RunStore(open_storage(job.storage))
    run_id = trial_run_id(sweep_id, tune.get_context().get_trial_id())
    try:
        run, resuming = store.get(run_id), True
    except ValueError:
        command = (store.get(sweep_id).provenance() or {}).get("command")  # the sweep's own
        record = provenance(data, command, trial_of=sweep_id)
        run, resuming = lifecycle.create_run(store.storage, trial_job, record, run_id), False
    if run.status()["status"] != "COMPLETED":
        if resuming:
            run.claim()  # ValueError where another live driver has it
        with lifecycle.recorded(run, Scrubber(config.to_mapping(trial_job))):
            relay = EpochRelay(console, run.id, trial_job.trainer.epochs)
            trainer = lifecycle.ray_trainer(trial_job, data, run, per_worker, [TuneReportCallback(), relay], console)
            lifecycle.execute(trial_job, run, trainer)
    tune.report(run.metrics()[-1] | (run.test_metrics() if run.has_final_model() else {}))  # none if stopped


def close_unfinished(sweep: Run, settings: SweepConfig, interrupted: bool, errored: frozenset = frozenset()) -> None:
    """Mark the trial runs that ended without finishing: STOPPED when the sweep was interrupted or the scheduler
    stopped them, FAILED when they ended before their first epoch.

    A trial the scheduler stops can see its workers die before Tune ends it, and record itself FAILED; unless
    Tune saw that trial fail (`errored` holds the trial ids it did), such a run was stopped early.
    """
    scheduler = settings.scheduler.name
    for run in trial_runs(sweep):
        status = run.status()["status"]
        trial_id = run.id.removeprefix(f"{sweep.id}-")
        epochs = len(run.metrics())
        if interrupted and status not in ENDED:
            run.set_status("STOPPED", f"the sweep was interrupted; resume={sweep.id} continues it")
        elif not interrupted and (status not in ENDED or (status == "FAILED" and trial_id not in errored)):
            if epochs:
                run.set_status("STOPPED", f"stopped early by the {scheduler} scheduler after epoch {epochs}")
            elif status not in ENDED:
                run.set_status("FAILED", "the trial ended before its first epoch")
