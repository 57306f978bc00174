"""Runs from Python: open one (a run id, or NAME:N / NAME@alias for the run a registered version came from) or list
them, and read a run's status, config, summary, metrics (a pandas DataFrame), plots and final Keras model, or
register that model."""

import itertools
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dltrain.api.store import StorageLocation, opened
from dltrain.errors import DltrainError, one_line_errors
from dltrain.overview import SHOWN_STATUSES, overview, read_file, run_named
from dltrain.references import model_folder
from dltrain.registry import Registry, parse_tags
from dltrain.runs import MODEL_FILE, Run, RunStore, check_run_id, observed_status
from dltrain.tracking import mirror_version

if TYPE_CHECKING:  # imported when used: `import dltrain` loads neither
    import keras
    import pandas


class RunHandle:
    """A run (or a sweep) in a run store, as `dltrain.train` returns it and `dltrain.open_run` finds it. Each method
    reads the run's folder anew (a live run's status and metrics are current); a file that does not read is a
    DltrainError naming it."""

    def __init__(self, run: Run):
        self._run = run

    @property
    def id(self) -> str:
        """The run id (a sweep's id for a sweep)."""
        return self._run.id

    @property
    def uri(self) -> str:
        """The run's folder: a local path or an s3:// URI."""
        return self._run.uri

    def __repr__(self) -> str:
        return f"<dltrain run {self.id} at {self.uri}>"

    def status(self) -> str:
        """PENDING, RUNNING, COMPLETED, FAILED or STOPPED; LOST for a PENDING or RUNNING run whose driver died."""
        return observed_status(read_file(self._run, "status.json", self._run.status))

    def overview(self) -> dict[str, Any]:
        """What `list_runs` gives of this run: model, dataset, status, epochs, accuracies, times, error, uri."""
        return overview(self._run)

    def config(self) -> dict[str, Any]:
        """The run's resolved config, as its config.yaml saved it (secret-looking values as ***)."""
        return read_file(self._run, "config.yaml", self._run.config)

    def summary(self) -> dict[str, Any]:
        """summary.json: test metrics, epochs, duration ({} until the run has ended)."""
        if not self._run.storage.exists(f"{self._run.path}/summary.json"):
            return {}
        return read_file(self._run, "summary.json", self._run.summary)

    def metrics(self) -> "pandas.DataFrame":
        """The metrics history, one row per finished epoch (epoch, loss, accuracy, val_loss, val_accuracy, ...)."""
        import pandas

        rows = read_file(self._run, "metrics.parquet", self._run.metrics, list)
        return pandas.DataFrame(rows) if rows else pandas.DataFrame(columns=["epoch"])

    def plots(self) -> dict[str, bytes]:
        """The run's PNG plots by file name: curves.png and confusion_matrix.png of a completed run, trials.png of
        a sweep (IPython.display.Image(data) shows one in a notebook)."""
        folder = f"{self._run.path}/plots"
        return {
            name: self._run.storage.read_bytes(f"{folder}/{name}")
            for name in sorted(self._run.storage.list_files(folder))
        }

    def model(self) -> "keras.Model":
        """The final Keras model of a COMPLETED run (not compiled); DltrainError for a run without one."""
        from dltrain.serving.classifier import keras_model  # Keras: only once a model is loaded

        with one_line_errors():
            folder = model_folder(self._run.storage, self.id)
        return keras_model(self._run.storage.read_bytes(f"{folder.path}/{MODEL_FILE}"))

    def register(self, name: str, *, tags: Mapping[str, str] | None = None, alias: str | None = None) -> dict:
        """Register the final model of this COMPLETED run as the next version of `name`, with `tags`, and point
        `alias` (e.g. production) at it, as `dltrain models register` does (in MLflow's registry too, where the
        run was mirrored); returns the version's record (name,
        version, run_id, metrics, tags, ..., and the `uri` of its folder)."""
        given = {str(key): str(value) for key, value in (tags or {}).items()}
        registry = Registry(self._run.storage)
        with one_line_errors():
            # As `--tag KEY=VALUE` is parsed; a key with an = in it would parse as another key.
            if parse_tags([f"{key}={value}" for key, value in given.items()]) != given:
                raise ValueError(f"tags {given}: a key is letters, digits, _ . - and a value one line of text")
            record = registry.register(self._run, name, given, alias)
            saved = self._run.config()
        mirror_version(saved, record, alias)  # to MLflow's registry, where this run was mirrored
        return record | {"uri": registry.uri_of(record["name"], record["version"])}


def open_run(
    reference: str, *, storage: StorageLocation = None, endpoint_url: str | None = None, region: str | None = None
) -> RunHandle:
    """The run `reference` names in `storage`: a run id, or NAME:N or NAME@alias (the run that registered version
    came from); DltrainError in one line where there is none."""
    return RunHandle(run_named(RunStore(opened(storage, endpoint_url, region)), reference))


def list_runs(
    storage: StorageLocation = None,
    *,
    status: str | None = None,
    sweep: str | None = None,
    limit: int | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> list[dict[str, Any]]:
    """The runs in `storage`, newest first, each as its overview (the objects of `dltrain runs list --json`: id,
    kind, model, dataset, status, workers, epochs_done, epochs, best_val_accuracy, test_accuracy, started, ended,
    duration_seconds, error, uri; `pandas.DataFrame(list_runs())` tabulates them). A run whose files do not read is
    UNREADABLE, its error saying why. Only the runs of `status` (a run status, LOST or UNREADABLE), or the trials of
    the sweep `sweep`; at most `limit` (no more runs are read)."""
    if status is not None and status not in SHOWN_STATUSES:
        raise DltrainError(f"status={status!r}: expected one of {', '.join(SHOWN_STATUSES)}")
    if sweep is not None:
        with one_line_errors():
            check_run_id(sweep)
    if limit is not None and limit < 1:
        raise DltrainError(f"limit={limit}: expected an integer >= 1")
    runs = reversed(RunStore(opened(storage, endpoint_url, region)).list())  # run ids sort by start time
    if sweep is not None:
        runs = (run for run in runs if run.id.startswith(f"{sweep}-"))
    overviews = (overview(run) for run in runs)
    if status is not None:
        overviews = (item for item in overviews if item["status"] == status)
    return list(itertools.islice(overviews, limit if limit is None or limit <= sys.maxsize else None))
