"""A sweep on the driver: Ray Tune runs its trials (trial.py) on the connected Ray, with its settings in Tune's
terms (tune_settings.py), continuing Tune's saved state when resumed; the sweep's folder records it (report.py)."""

import os
import time
from collections.abc import Callable

from ray import tune

from dltrain import capacity, cluster, config, lifecycle
from dltrain.console import Console
from dltrain.data.dataset import DataSet
from dltrain.errors import DltrainError
from dltrain.job import Job
from dltrain.redaction import Scrubber
from dltrain.runs import Run
from dltrain.sweep import report
from dltrain.sweep.trial import close_unfinished, run_trial
from dltrain.sweep.tune_settings import param_space, scheduler, search_algorithm, trial_count

_TUNE_FOLDER = "tune"


def run_sweep(job: Job, data: DataSet, sweep: Run, resuming: bool, on_epoch: Callable[[str], None] | None) -> dict:
    """Run (or resume) the sweep `job` describes on the data set `data`, recorded in `sweep`; returns its summary.
    The console calls `on_epoch` with a trial's run id at each of its epochs."""
    settings = job.sweep
    trials = trial_count(settings)
    at_once = min(settings.max_concurrent_trials, trials)
    started = time.time()
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Tune's legacy console output, which verbose=0 silences: TrialTable reports
    with lifecycle.recorded(sweep, Scrubber(config.to_mapping(job))):
        try:
            with (
                cluster.ray_connection(job.ray.address, dashboard=True) as embedded,
                Console("none", on_epoch=on_epoch) as console,
                report.progress_to(sweep.id, console),
            ):
                results = _tune(job, data, sweep, trials, at_once, resuming, console, embedded)
        except KeyboardInterrupt:
            close_unfinished(sweep, settings, interrupted=True)
            raise
        errored = frozenset(result.metrics.get("trial_id") for result in results if result.error)
        close_unfinished(sweep, settings, interrupted=False, errored=errored)
        rows, histories = report.trials_table(job, sweep)
        summary = report.summarize(job, sweep, rows, time.time() - started)
        if summary["best"] is None:
            raise DltrainError(f"sweep {sweep.id}: no trial reported {settings.metric}; see the trials' logs")
        report.plot(sweep, settings, rows, histories, summary["best"]["trial_id"])
        sweep.write_summary(summary)
        sweep.set_status("COMPLETED")
    report.print_result(summary)
    return summary


def _tune(
    job: Job, data: DataSet, sweep: Run, trials: int, at_once: int, resuming: bool, console: Console, embedded: bool
) -> tune.ResultGrid:
    """Run the trials with Ray Tune on the connected Ray (an `embedded` one, or a cluster that may autoscale),
    continuing Tune's saved state when resuming; the trials send their progress to `console`, which the trial table
    shows."""
    settings = job.sweep
    autoscaling = capacity.autoscaled(embedded)
    per_worker = capacity.worker_resources(job.resources, autoscaling, at_once)
    with lifecycle.terminate_as_interrupt():  # one trial's workers: the trials' own requests scale the cluster further
        capacity.ensure_capacity(job.resources, per_worker, job.ray.wait_for_workers_s, autoscaling)
    cluster.check_paths_on_nodes(data.shared_path, sweep.storage)
    sweep.set_status("RUNNING")
    print(
        f"dltrain: {trials} trials of {settings.metric} ({settings.mode}), {at_once} at a time, each "
        f"{job.resources.num_workers} worker(s) x {per_worker}",
        flush=True,
    )
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, job=job, data=data, sweep_id=sweep.id, per_worker=per_worker, console=console.handle
        ),
        {"CPU": capacity.TRIAL_CPUS},
    )
    tune_path = sweep.storage.join(sweep.id, _TUNE_FOLDER)
    if resuming and tune.Tuner.can_restore(tune_path, storage_filesystem=sweep.storage.filesystem):
        tuner = tune.Tuner.restore(tune_path, trainable, storage_filesystem=sweep.storage.filesystem)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(settings),
            tune_config=tune.TuneConfig(
                metric=settings.metric,
                mode=settings.mode,
                num_samples=settings.num_samples,
                scheduler=scheduler(settings, job.trainer.epochs),
                search_alg=search_algorithm(settings, at_once),
                max_concurrent_trials=at_once,
            ),
            run_config=tune.RunConfig(
                name=_TUNE_FOLDER,
                storage_path=sweep.storage.join(sweep.id),
                storage_filesystem=sweep.storage.filesystem,
                callbacks=[report.TrialTable(sweep.id, settings, job.trainer.epochs)],
                verbose=0,
            ),
        )
    with sweep.heartbeat():
        return lifecycle.fit(tuner)
