"""Hyperparameter sweeps: Ray Tune runs one dltrain training run per trial over a search space from conf/sweep/.

A sweep has a folder like a run's (config.yaml, status.json, logs/) plus:

<storage>/<sweep id>/trials.parquet   one row per trial: trial and run ids, sampled values, status, epochs, metrics
                     summary.json     the best trial: its values, metric, epoch and run id; trial and epoch counts
                     tune/            Ray Tune's own state, from which `resume=<sweep id>` continues
                     plots/trials.png the metric against each searched key, and each trial's curve

Every trial is a whole run in its own folder, <storage>/<sweep id>-<trial id>/, so its model, metrics and
checkpoints are found as any run's. Following Ray Train V2's pattern, a trial is a function that builds and
fits one trainer, and Ray Train's Tune callback forwards each epoch's metrics to the scheduler.
"""

import contextlib
import io
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from ray import tune
from ray.actor import ActorHandle
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler
from ray.tune.search import BasicVariantGenerator

from dltrain import capacity, cluster, config, formatting, lifecycle, plots, search_space
from dltrain.console import Console
from dltrain.data.dataset import DataSet
from dltrain.errors import DltrainError
from dltrain.frameworks import tensorflow as framework
from dltrain.job import AshaConfig, Job, MedianConfig, SweepConfig
from dltrain.runs import ENDED, Run, RunStore
from dltrain.search_space import Dimension
from dltrain.storage import open_storage

TIME_ATTRIBUTE = "epoch"  # schedulers count a trial's progress in its run's epochs, which survive restarts of the trial


def dimensions(sweep: SweepConfig) -> dict[str, Dimension]:
    """The searched keys, dotted, and their parsed expressions."""
    return {path: search_space.parse(expression) for path, expression in search_space.flatten(sweep.space).items()}


def _domain(dimension: Dimension, grid: bool) -> Any:
    if grid:
        return tune.grid_search(dimension.candidates())
    sampler = {
        "uniform": tune.uniform,
        "quniform": tune.quniform,
        "loguniform": tune.loguniform,
        "randint": tune.randint,
        "choice": tune.choice,
    }[dimension.distribution]
    return sampler(*dimension.arguments)


def param_space(sweep: SweepConfig) -> dict[str, Any]:
    """Ray Tune's search space for the sweep, keyed by dotted config key."""
    grid = sweep.search.algorithm == "grid"
    return {path: _domain(dimension, grid) for path, dimension in dimensions(sweep).items()}


def trial_count(sweep: SweepConfig) -> int:
    """How many trials the sweep runs: num_samples, or num_samples times the grid's combinations."""
    if sweep.search.algorithm != "grid":
        return sweep.num_samples
    return sweep.num_samples * math.prod(len(d.candidates()) for d in dimensions(sweep).values())


class _SparesLastEpoch:
    """A scheduler that never stops a trial on its last epoch: the trial's test evaluation and final model come
    after that epoch's report, and a stop then would lose them."""

    def __init__(self, last_epoch: int, **settings: Any):
        super().__init__(**settings)
        self.last_epoch = last_epoch

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        return TrialScheduler.CONTINUE if result.get(TIME_ATTRIBUTE, 0) >= self.last_epoch else decision


class _ASHA(_SparesLastEpoch, ASHAScheduler):
    pass


class _Median(_SparesLastEpoch, MedianStoppingRule):
    pass


def scheduler(sweep: SweepConfig, epochs: int) -> Any:
    """Tune's trial scheduler for sweep.scheduler, over trials of `epochs` epochs."""
    settings = sweep.scheduler
    if isinstance(settings, AshaConfig):
        return _ASHA(
            epochs,
            time_attr=TIME_ATTRIBUTE,
            max_t=epochs,
            grace_period=settings.grace_period,
            reduction_factor=settings.reduction_factor,
        )
    if isinstance(settings, MedianConfig):
        return _Median(
            epochs,
            time_attr=TIME_ATTRIBUTE,
            grace_period=settings.grace_period,
            min_samples_required=settings.min_samples_required,
        )
    return FIFOScheduler()


def search_algorithm(sweep: SweepConfig, at_once: int) -> Any:
    """Random or grid sampling, or Optuna's TPE (which Tune limits to `at_once` trials through TuneConfig)."""
    seed = sweep.search.seed
    if sweep.search.algorithm == "bayes":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed))
    return BasicVariantGenerator(max_concurrent=at_once, random_state=seed)


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
    sends its progress to the sweep's `console`.

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
        run, resuming = store.create(config.to_mapping(trial_job), framework.versions(), run_id), False
    if run.status()["status"] != "COMPLETED":
        if resuming:
            run.mark_resumed()
        with lifecycle.recorded(run):
            trainer = lifecycle.ray_trainer(trial_job, data, run, per_worker, [TuneReportCallback()], console)
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


_TABLE_SECONDS = 30  # the console's progress table, at most this often

# sweep id -> the console its trials send their progress to, while the sweep runs. Tune pickles its callbacks with
# its state (and a resumed sweep gets them back from there): the trial table finds the console by the sweep's id.
_CONSOLES: dict[str, Console] = {}


@contextlib.contextmanager
def progress_to(sweep_id: str, console: Console) -> Iterator[None]:
    """In this block the trial table of sweep `sweep_id` shows its running trials' progress from `console`."""
    _CONSOLES[sweep_id] = console
    try:
        yield
    finally:
        del _CONSOLES[sweep_id]


class TrialTable(tune.Callback):
    """The console: a compact table of the trials every _TABLE_SECONDS while something changed or a trial runs,
    with each running trial's progress in its epoch."""

    def __init__(self, sweep_id: str, sweep: SweepConfig, epochs: int):
        self.sweep_id, self.metric, self.epochs = sweep_id, sweep.metric, epochs
        self.paths = list(search_space.flatten(sweep.space))
        self._printed_at = 0.0
        self._changed = False

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._changed = True

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._changed = True

    def on_step_end(self, iteration, trials, **info) -> None:
        moving = self._changed or any(trial.status == "RUNNING" for trial in trials)
        if moving and time.monotonic() - self._printed_at > _TABLE_SECONDS:
            self._printed_at, self._changed = time.monotonic(), False
            print(self.table(trials), flush=True)

    def _status(self, trial: Any) -> str:
        """Tune's status, with a finished trial told apart from one the scheduler stopped."""
        if trial.status != "TERMINATED":
            return trial.status
        return "COMPLETED" if trial.last_result.get(TIME_ATTRIBUTE) == self.epochs else "STOPPED"

    def _progress(self, trial: Any) -> str:
        """ "epoch 3 45%": where a running trial is in the epoch it trains now."""
        console = _CONSOLES.get(self.sweep_id)
        progress = console and console.latest.get(trial_run_id(self.sweep_id, trial.trial_id))
        return f"epoch {progress['epoch']} {100 * progress['step'] // progress['steps']}%" if progress else ""

    def table(self, trials: list) -> str:
        """Trial id, Tune status, epochs, metric and sampled values, one line per trial."""
        statuses = [self._status(trial) for trial in trials]
        counts = {status: statuses.count(status) for status in sorted(set(statuses))}
        lines = [f"trials: {', '.join(f'{n} {status}' for status, n in counts.items())}"]
        header = ["trial", "status", "epoch", "progress", self.metric, *self.paths]
        rows = [
            [
                trial.trial_id,
                status,
                str(trial.last_result.get(TIME_ATTRIBUTE, "")),
                self._progress(trial) if status == "RUNNING" else "",
                _format(trial.last_result.get(self.metric)),
                *(_format(trial.config.get(path)) for path in self.paths),
            ]
            for trial, status in zip(trials, statuses, strict=True)
        ]
        return "\n".join([*lines, *formatting.table(header, rows, indent="  ")])


def _format(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trials_table(job: Job, sweep: Run) -> tuple[list[dict], dict[str, list[dict]]]:
    """Write trials.parquet, one row per trial from its run folder; return its rows, and each trial's metrics
    history by trial id."""
    settings, epochs = job.sweep, job.trainer.epochs
    metric, pick = settings.metric, (max if settings.mode == "max" else min)
    rows, histories = [], {}
    for run in trial_runs(sweep):
        history = histories[run.id.removeprefix(f"{sweep.id}-")] = run.metrics()
        status = run.status()["status"]
        values = search_space.flatten(run.config())
        scores = [row[metric] for row in history if row.get(metric) is not None]
        rows.append(
            {
                "trial_id": run.id.removeprefix(f"{sweep.id}-"),
                "run_id": run.id,
                **{path: values[path] for path in search_space.flatten(settings.space)},
                "status": status,
                "epochs": len(history),
                "of_epochs": epochs,
                f"best_{metric}": pick(scores) if scores else None,
                f"last_{metric}": scores[-1] if scores else None,
                "test_accuracy": run.test_metrics()["test_accuracy"] if status == "COMPLETED" else None,
            }
        )
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    sweep.storage.write_bytes(sweep.storage.join(sweep.id, "trials.parquet"), buffer.getvalue())
    return rows, histories


def plot(sweep: Run, settings: SweepConfig, rows: list[dict], histories: dict[str, list[dict]], best: str) -> None:
    """plots/trials.png: the metric against each searched key, and each trial's curve."""
    searched = dimensions(settings)
    title = f"sweep {sweep.id}: {len(rows)} trials, {settings.metric} ({settings.mode})"
    log_keys = [path for path, dimension in searched.items() if dimension.distribution == "loguniform"]
    png = plots.trials(rows, list(searched), settings.metric, histories, title, best, log_keys)
    sweep.write_plot("trials.png", png)


def summarize(job: Job, sweep: Run, rows: list[dict], seconds: float) -> dict:
    """summary.json: the trials' counts and epochs, and the best trial by sweep.metric."""
    settings = job.sweep
    metric, pick = settings.metric, (max if settings.mode == "max" else min)
    scored = [row for row in rows if row[f"best_{metric}"] is not None]
    best = pick(scored, key=lambda row: row[f"best_{metric}"]) if scored else None
    return {
        "sweep_id": sweep.id,
        "status": "COMPLETED",
        "metric": metric,
        "mode": settings.mode,
        "trials": len(rows),
        "completed": sum(row["status"] == "COMPLETED" for row in rows),
        "stopped_early": sum(row["status"] == "STOPPED" for row in rows),
        "failed": sum(row["status"] == "FAILED" for row in rows),
        "trial_epochs": sum(row["epochs"] for row in rows),
        "budget_epochs": len(rows) * job.trainer.epochs,
        "best": best
        and {
            "trial_id": best["trial_id"],
            "run_id": best["run_id"],
            metric: best[f"best_{metric}"],
            "values": {path: best[path] for path in search_space.flatten(settings.space)},
            "status": best["status"],
            "test_accuracy": best["test_accuracy"],
        },
        "wall_seconds": round(seconds, 1),
    }


def print_result(summary: dict) -> None:
    """The sweep's last two lines: its trials and epochs, and the best trial's values."""
    print(
        f"dltrain: sweep {summary['sweep_id']} COMPLETED: {summary['trials']} trials "
        f"({summary['completed']} completed, {summary['stopped_early']} stopped early, {summary['failed']} failed), "
        f"{summary['trial_epochs']} of {summary['budget_epochs']} epochs, {summary['wall_seconds']:.0f}s",
        flush=True,
    )
    best, metric = summary["best"], summary["metric"]
    values = "  ".join(f"{path}={_format(value)}" for path, value in best["values"].items())
    print(f"dltrain: best {metric} {best[metric]:.4f}: {values} -> run {best['run_id']}", flush=True)


_TUNE_FOLDER = "tune"


def run_sweep(job: Job, data: DataSet, sweep: Run, resuming: bool) -> dict:
    """Run (or resume) the sweep `job` describes on the data set `data`, recorded in `sweep`; returns its summary."""
    settings = job.sweep
    trials = trial_count(settings)
    at_once = min(settings.max_concurrent_trials, trials)
    started = time.time()
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Tune's legacy console output, which verbose=0 silences: TrialTable reports
    with lifecycle.recorded(sweep):
        try:
            with (
                cluster.ray_connection(job.ray.address, dashboard=True) as embedded,
                Console("none") as console,
                progress_to(sweep.id, console),
            ):
                results = _tune(job, data, sweep, trials, at_once, resuming, console, embedded)
        except KeyboardInterrupt:
            close_unfinished(sweep, settings, interrupted=True)
            raise
        errored = frozenset(result.metrics.get("trial_id") for result in results if result.error)
        close_unfinished(sweep, settings, interrupted=False, errored=errored)
        rows, histories = trials_table(job, sweep)
        summary = summarize(job, sweep, rows, time.time() - started)
        if summary["best"] is None:
            raise DltrainError(f"sweep {sweep.id}: no trial reported {settings.metric}; see the trials' logs")
        plot(sweep, settings, rows, histories, summary["best"]["trial_id"])
        sweep.write_summary(summary)
        sweep.set_status("COMPLETED")
    print_result(summary)
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
                callbacks=[TrialTable(sweep.id, settings, job.trainer.epochs)],
                verbose=0,
            ),
        )
    with sweep.heartbeat():
        return lifecycle.fit(tuner)
