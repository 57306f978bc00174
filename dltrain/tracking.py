"""Mirroring to MLflow (tracking.mlflow_uri): a run, or a sweep with its trials as child runs, as it goes; and the
registry's new versions and aliases. The run folder stays the record: MLflow gets a copy.

The MLflow run of a dltrain run holds:
- params: its config.yaml flattened (`trainer.learning_rate`), as saved: secret-looking values are ***;
- metrics: each row of metrics.parquet at step = its epoch, sent as the console gets the epoch; when the run ends,
  its test metrics at the last epoch's step;
- tags: dltrain.run_id (by which a resumed run finds its MLflow run again), dltrain.kind (run, sweep or trial),
  dltrain.status (and dltrain.error), dltrain.framework, dltrain.git_commit and dltrain.git_dirty (and MLflow's own
  mlflow.source.git.commit), dltrain.uri; a trial's mlflow.parentRunId is its sweep's MLflow run;
- artifacts, when it ends: plots/, provenance.json and model/ (model.keras, test metrics, confusion matrix).

Only the driver talks to MLflow, on a thread of its own: training never waits for it. MLflow's client retries every
request (MLFLOW_HTTP_REQUEST_MAX_RETRIES, 7 by default, about 4 minutes; MLFLOW_HTTP_REQUEST_TIMEOUT); a request that
still fails, or any other error on the way, is reported in one line, and the mirroring of that run (or sweep) stops
there. The run goes on as if tracking were off.

mlflow is imported here only, and only when tracking is on: dltrain without the `mlflow` extra never needs it.
"""

import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from dltrain.config import saved_overview
from dltrain.job import Job, TrackingConfig
from dltrain.runs import ENDED, PROVENANCE_FILE, Run
from dltrain.search_space import flatten

log = logging.getLogger(__name__)

RUN_ID_TAG = "dltrain.run_id"
VERSION_TAG = "dltrain.version"  # on an MLflow model version: the dltrain registry version it mirrors
_BATCH = 100  # entries per log_batch call: MLflow takes at most 100 params or tags (and 1,000 metrics) at once
_ENDED_AS = {"COMPLETED": "FINISHED", "FAILED": "FAILED", "STOPPED": "KILLED"}  # dltrain's final status -> MLflow's
_ARTIFACT_FOLDERS = ("plots", "model")  # copied when a run ends, with provenance.json


def _client(settings: TrackingConfig) -> Any:
    """An MlflowClient of the tracking server (its registry too)."""
    # MLflow prints links to the run on stdout when a run ends, amid the console's lines (unless told otherwise).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    try:
        from mlflow import MlflowClient  # here: dltrain without tracking needs no MLflow
    except ImportError as error:
        raise RuntimeError(f"MLflow's client is not installed ({error}): pip install 'dltrain[mlflow]'") from error
    return MlflowClient(settings.mlflow_uri)


def _warn(settings: TrackingConfig, error: Exception, consequence: str, stream: TextIO | None = None) -> None:
    """One line on the console (`stream`, else stderr) for a failure to mirror; the traceback goes to the log (a
    run's driver log)."""
    log.info("MLflow at %s failed", settings.mlflow_uri, exc_info=error)
    cause = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    print(f"dltrain: warning: MLflow at {settings.mlflow_uri} failed: {cause}; {consequence}",
          file=stream or sys.stderr, flush=True)  # fmt: skip


def _params(config: dict) -> dict[str, str]:
    """A saved config's values by dotted key, as text: strings as they are, everything else as JSON."""
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in flatten(config).items()}


def _create_if_missing(create: Callable[[str], Any], name: str) -> None:
    """`create(name)` (an experiment, a registered model), unless MLflow has it already."""
    try:
        create(name)
    except Exception as error:
        if getattr(error, "error_code", None) != "RESOURCE_ALREADY_EXISTS":  # another client created it meanwhile
            raise


def _experiment_id(client: Any, name: str) -> str:
    """The id of the experiment `name`, created if it does not exist yet."""
    if client.get_experiment_by_name(name) is None:
        _create_if_missing(client.create_experiment, name)
    return client.get_experiment_by_name(name).experiment_id


def _find_run(client: Any, experiment_id: str, run_id: str) -> Any:
    """The MLflow run that mirrors dltrain run `run_id`, None if there is none."""
    found = client.search_runs([experiment_id], f"tags.`{RUN_ID_TAG}` = '{run_id}'", max_results=1)
    return found[0] if found else None


@contextlib.contextmanager
def mirrored(job: Job, run: Run) -> Iterator[Callable[[str], None] | None]:
    """In this block `run` (a run or a sweep of `job`) is mirrored to job.tracking's MLflow server, if any. Yields
    the console's on_epoch (None when tracking is off); at the block's end the run, and a sweep's trials, are
    mirrored as they ended, and the block waits until MLflow has them (or has failed)."""
    if job.tracking.mlflow_uri is None:
        yield None
        return
    tracker = _Tracker(job.tracking, run, "sweep" if job.sweep else "run")
    try:
        yield tracker.epoch_ended
    finally:
        tracker.close()


class _Tracker:
    """Mirrors one run, or a sweep and its trials, on a thread of its own, until the first failure."""

    def __init__(self, settings: TrackingConfig, root: Run, kind: str):
        self.settings, self.root, self.kind = settings, root, kind
        self._client: Any = None
        self._experiment_id: str | None = None
        self._mlflow_ids: dict[str, str] = {}  # dltrain run id -> its MLflow run id
        self._ended: dict[str, str] = {}  # dltrain run id -> the final status its MLflow run has mirrored
        self._logged: dict[str, int] = {}  # dltrain run id -> the last epoch its MLflow run has
        self._failed = False
        # The console's stderr as it is now: a run that trains in the driver (local mode) points fd 2 at its worker
        # log while it trains, and a failure to mirror is still said on the console.
        self._console = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="dltrain-mlflow")
        self._submit(self._mlflow_id, root.id)

    def epoch_ended(self, run_id: str) -> None:
        """The console's on_epoch: mirror the new rows of `run_id`'s metrics (a trial's first starts its run)."""
        self._submit(self._sync, run_id)

    def close(self) -> None:
        """Mirror how the run (and a sweep's trials) ended, and wait until that is done."""
        self._submit(self._finish_all)
        self._thread.shutdown(wait=True)
        self._console.close()

    def _submit(self, task: Callable[..., None], *args: Any) -> None:
        self._thread.submit(self._guarded, task, *args)

    def _guarded(self, task: Callable[..., None], *args: Any) -> None:
        if self._failed:
            return
        try:
            task(*args)
        except Exception as error:  # whatever fails, the run goes on: it is not mirrored from here on
            self._failed = True
            _warn(self.settings, error, f"{self.kind} {self.root.id} is not mirrored from here on", self._console)

    def _mlflow_id(self, run_id: str) -> str:
        """The MLflow run of dltrain run `run_id` (the root, or one of its trials): found by its tag (a resumed
        run's), else created with its params and tags. Marked RUNNING again where the dltrain run is training."""
        if run_id in self._mlflow_ids:
            return self._mlflow_ids[run_id]
        if self._client is None:
            self._client = _client(self.settings)
            self._experiment_id = _experiment_id(self._client, self.settings.experiment)
        client, run = self._client, Run(self.root.storage, run_id)
        training = run.status()["status"] not in ENDED
        found = _find_run(client, self._experiment_id, run_id)
        if found is None:
            config = run.config()
            tags = self._tags(run, saved_overview(config).framework)
            mlflow_id = client.create_run(self._experiment_id, run_name=run_id, tags=tags).info.run_id
            self._log(mlflow_id, params=_params(config))
            self._logged[run_id] = 0
        else:
            mlflow_id = found.info.run_id
            if training:  # resumed
                client.update_run(mlflow_id, status="RUNNING")
                client.set_tag(mlflow_id, "dltrain.status", "RUNNING")
            elif (mirrored := found.data.tags.get("dltrain.status")) in ENDED:
                self._ended[run_id] = mirrored
            history = client.get_metric_history(mlflow_id, "loss")
            self._logged[run_id] = max((metric.step for metric in history), default=0)
        self._mlflow_ids[run_id] = mlflow_id
        return mlflow_id

    def _tags(self, run: Run, framework: str) -> dict[str, str]:
        """The tags a new MLflow run of `run` starts with (dltrain.status RUNNING until it ends)."""
        git = (run.provenance() or {}).get("git")
        tags = {
            RUN_ID_TAG: run.id,
            "dltrain.kind": self.kind if run.id == self.root.id else "trial",
            "dltrain.status": "RUNNING",
            "dltrain.framework": framework,
            "dltrain.uri": run.uri,
        }
        if git:
            tags |= {"dltrain.git_commit": git["commit"], "dltrain.git_dirty": str(git["dirty"]).lower(),
                     "mlflow.source.git.commit": git["commit"]}  # fmt: skip
        if run.id != self.root.id:
            tags["mlflow.parentRunId"] = self._mlflow_id(self.root.id)
        return tags

    def _log(self, mlflow_id: str, params: dict[str, str] | None = None, metrics: list | None = None) -> None:
        """log_batch, in batches that MLflow takes."""
        from mlflow.entities import Param

        params_list = [Param(key, value) for key, value in (params or {}).items()]
        for start in range(0, len(params_list), _BATCH):
            self._client.log_batch(mlflow_id, params=params_list[start : start + _BATCH])
        for start in range(0, len(metrics or []), _BATCH):
            self._client.log_batch(mlflow_id, metrics=metrics[start : start + _BATCH])

    def _sync(self, run_id: str) -> None:
        """Send the rows of `run_id`'s metrics.parquet that its MLflow run lacks, each at step = its epoch."""
        from mlflow.entities import Metric

        mlflow_id = self._mlflow_id(run_id)
        rows = [row for row in Run(self.root.storage, run_id).metrics() if row["epoch"] > self._logged[run_id]]
        if not rows:
            return
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, row["epoch"])
            for row in rows
            for key, value in row.items()
            if key != "epoch" and isinstance(value, (int, float))
        ]
        self._log(mlflow_id, metrics=metrics)
        self._logged[run_id] = rows[-1]["epoch"]

    def _finish_all(self) -> None:
        """Mirror how each trial of a sweep, then the run or sweep itself, ended."""
        from dltrain.sweep.trial import trial_runs  # here: it imports Ray Tune, which `dltrain models` need not

        for trial in trial_runs(self.root) if self.kind == "sweep" else []:
            self._finish(trial.id)
        self._finish(self.root.id)

    def _finish(self, run_id: str) -> None:
        """Mirror how `run_id` ended: the rest of its metrics, its test metrics, status, plots, provenance and model,
        then MLflow's own status. A run that has not ended (its status could not be stored) stays RUNNING."""
        from mlflow.entities import Metric

        run = Run(self.root.storage, run_id)
        record = run.status()
        mlflow_id = self._mlflow_id(run_id)
        if record["status"] not in ENDED or self._ended.get(run_id) == record["status"]:
            return  # not ended, or mirrored as it ended already (a resumed sweep's finished trial)
        self._sync(run_id)
        if run.has_final_model():
            now, step = int(time.time() * 1000), self._logged[run_id]
            self._log(mlflow_id, metrics=[Metric(key, value, now, step) for key, value in run.test_metrics().items()])
        with tempfile.TemporaryDirectory(prefix="dltrain-mlflow-") as staging:
            for folder in _ARTIFACT_FOLDERS:
                if run.storage.exists(f"{run.path}/{folder}"):
                    run.storage.download(f"{run.path}/{folder}", Path(staging) / folder)
            if (provenance := run.provenance()) is not None:
                (Path(staging) / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2))
            self._client.log_artifacts(mlflow_id, staging)
        self._client.set_tag(mlflow_id, "dltrain.status", record["status"])
        if record.get("error"):
            self._client.set_tag(mlflow_id, "dltrain.error", record["error"])
        self._client.set_terminated(mlflow_id, _ENDED_AS[record["status"]])
        self._ended[run_id] = record["status"]


def _tracking_of(config: dict) -> TrackingConfig | None:
    """The tracking settings of a saved config, None where it mirrors nowhere (or predates tracking)."""
    settings = saved_overview(config).tracking
    return settings if settings.mlflow_uri else None


def mirror_version(config: dict, record: dict, alias: str | None) -> None:
    """Mirror the new registry version `record` (NAME:N, of a run whose saved config is `config`) to MLflow's
    registry, where that run was mirrored: a version of the registered model NAME (created if missing) from the
    MLflow run's model/ artifacts, tagged dltrain.version=N and with the version's tags; `alias` too, if given.
    Says so in one line, or why not."""
    if (settings := _tracking_of(config)) is None:
        return
    name, version = record["name"], record["version"]
    try:
        client = _client(settings)
        experiment = client.get_experiment_by_name(settings.experiment)
        found = _find_run(client, experiment.experiment_id, record["run_id"]) if experiment else None
        if found is None:
            raise LookupError(f"no run of {record['run_id']} in its experiment {settings.experiment!r}")
        if not client.list_artifacts(found.info.run_id, "model"):
            raise LookupError(f"the MLflow run of {record['run_id']} has no model/ (its mirroring stopped early)")
        _create_if_missing(client.create_registered_model, name)
        tags = {**record["tags"], VERSION_TAG: str(version)}
        created = client.create_model_version(
            name, f"{found.info.artifact_uri}/model", found.info.run_id, tags=tags, await_creation_for=0
        )
        if alias is not None:
            client.set_registered_model_alias(name, alias, created.version)
    except Exception as error:
        _warn(settings, error, f"{name}:{version} is registered in dltrain only")
        return
    print(f"MLflow: {name} version {created.version}{f' @{alias}' if alias else ''} (from {name}:{version})")


def mirror_alias(config: dict, name: str, version: int, alias: str) -> None:
    """Point `alias` of MLflow's registered model `name` at the version that mirrors dltrain's NAME:`version`
    (whose saved config is `config`); says so in one line, or why not."""
    if (settings := _tracking_of(config)) is None:
        return
    try:
        client = _client(settings)
        mirrors = [
            found
            for found in client.search_model_versions(f"name = '{name}'")
            if found.tags.get(VERSION_TAG) == str(version)
        ]
        if not mirrors:
            raise LookupError(f"no version of {name!r} mirrors {name}:{version}")
        target = max(mirrors, key=lambda found: int(found.version))
        client.set_registered_model_alias(name, alias, target.version)
    except Exception as error:
        _warn(settings, error, f"{name}@{alias} moved in dltrain only")
        return
    print(f"MLflow: {name}@{alias} -> version {target.version} (from {name}:{version})")
