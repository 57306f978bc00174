"""One run's overview, for listings (`dltrain runs list`, `dltrain.list_runs`) and `runs show`: what it trains, how it
stands, how far it got."""

import math
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import yaml

from dltrain.config import saved_overview
from dltrain.errors import DltrainError
from dltrain.references import named_run
from dltrain.retrying_fs import StorageUnavailable
from dltrain.runs import STATUSES, Run, RunStore, observed_status

UNREADABLE = "UNREADABLE"  # the status listings show for a run whose files do not read
# LOST: PENDING or RUNNING, but its driver's heartbeat stopped; UNREADABLE: its files do not read (the error says)
SHOWN_STATUSES = (*STATUSES, "LOST", UNREADABLE)


def run_named(store: RunStore, run_id: str) -> Run:
    """The run `run_id` names, or the run a registered model's NAME:N or NAME@alias came from; DltrainError in one
    line if it is not a run id or there is no such run."""
    try:
        return named_run(store.storage, run_id)
    except ValueError as error:
        raise DltrainError(str(error)) from None


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if start is None:
        return None
    ended = datetime.fromisoformat(end) if end else datetime.now(timezone.utc)
    return (ended - datetime.fromisoformat(start)).total_seconds()


def _best(values: list[Any]) -> float | None:
    numbers = [value for value in values if isinstance(value, float) and not math.isnan(value)]
    return max(numbers) if numbers else None


def read_file(run: Run, name: str, load: Callable[[], Any], kind: type = dict) -> Any:
    """What `load` reads of the run's file `name`, which must be a `kind`; ValueError naming the file if it does not
    read (corrupt, or not what dltrain writes there). An outage is not the file's fault: it is raised."""
    try:
        content = load()
    except StorageUnavailable:
        raise
    except (OSError, ValueError, yaml.YAMLError) as error:
        reason = next(iter(str(error).strip().splitlines()), type(error).__name__)
        raise ValueError(f"run {run.id}: {name} does not read ({reason})") from None
    if not isinstance(content, kind):
        raise ValueError(f"run {run.id}: {name} holds a {type(content).__name__}, not a {kind.__name__}")
    return content


def read(run: Run) -> dict[str, Any]:
    """What a run's overview is made of, each file read once: status, config, summary ({} if none yet) and
    history (a sweep has none of its own); ValueError naming a file that does not read."""
    exists = run.storage.exists
    config = read_file(run, "config.yaml", run.config) if exists(f"{run.path}/config.yaml") else {}
    return {
        "status": read_file(run, "status.json", run.status),
        "config": config,
        "summary": read_file(run, "summary.json", run.summary) if exists(f"{run.path}/summary.json") else {},
        "history": [] if saved_overview(config).sweep else read_file(run, "metrics.parquet", run.metrics, list),
    }


def overview(run: Run, files: dict[str, Any] | None = None) -> dict[str, Any]:
    """id, kind, model, dataset, status (LOST for a silent RUNNING one), workers, epochs_done, epochs,
    best_val_accuracy, test_accuracy, started, ended, duration_seconds, error and uri; from `files` (read(run))
    where the caller has read them already. A run whose files do not read (corrupt, or edited into something dltrain
    never writes) is UNREADABLE, its error saying why: one bad folder never breaks a listing."""
    try:
        return _overview(run, files or read(run))
    except (ValueError, TypeError, AttributeError, KeyError) as error:  # what content of the wrong shape raises
        unknown = dict.fromkeys(("kind", "model", "dataset", "workers"), "?") | dict.fromkeys(
            ("epochs_done", "epochs", "best_val_accuracy", "test_accuracy", "started", "ended", "duration_seconds")
        )
        return {"id": run.id, **unknown, "status": UNREADABLE, "error": str(error), "uri": run.uri}


def _overview(run: Run, files: dict[str, Any]) -> dict[str, Any]:
    status, summary, history = files["status"], files["summary"], files["history"]
    saved = saved_overview(files["config"])
    sweep = saved.sweep
    started = status.get("started")
    best = _best([row.get("val_accuracy") for row in history])
    if sweep and summary.get("metric") == "val_accuracy" and summary.get("best"):
        best = summary["best"]["val_accuracy"]
    return {
        "id": run.id,
        "kind": "sweep" if sweep else "run",
        "model": saved.model,
        "dataset": saved.dataset,
        "status": observed_status(status),
        "workers": saved.workers,
        "epochs_done": None if sweep else len(history),
        "epochs": saved.epochs,
        "best_val_accuracy": best,
        "test_accuracy": summary.get("test_accuracy", summary.get("best", {}).get("test_accuracy") if sweep else None),
        "started": started,
        "ended": status.get("ended"),
        "duration_seconds": _seconds_between(started, status.get("ended")),
        "error": status.get("error"),
        "uri": run.uri,
    }
