"""What a sweep reports: the console's trial table while it runs; then trials.parquet (one row per trial, from its
run folder), summary.json (the best trial), plots/trials.png, and the result lines."""

import contextlib
import io
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from ray import tune

from dltrain import formatting, plots, search_space
from dltrain.console import Console
from dltrain.job import Job, SweepConfig
from dltrain.runs import Run
from dltrain.sweep.trial import trial_run_id, trial_runs
from dltrain.sweep.tune_settings import TIME_ATTRIBUTE, dimensions

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
