"""The run store: one folder per run id holding config, status, metrics history, summary and artifacts.

<storage>/<run id>/config.yaml        resolved config, secrets redacted
                   status.json        PENDING / RUNNING / COMPLETED / FAILED / STOPPED, timestamps, error
                   metrics.parquet    one row per epoch
                   summary.json       written once a run has ended
                   model/model.keras  the final model, and model/test_metrics.json its test loss and accuracy
                   checkpoints/       Ray Train checkpoints, one per epoch (the newest few are kept)
                   tensorboard/, logs/
"""

import io
import json
import re
import secrets
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from dltrain.storage import Storage

STATUSES = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "STOPPED")
ENDED = ("COMPLETED", "FAILED", "STOPPED")
_SECRET_KEY = re.compile(r"secret|password|passwd|token|credential|private_key|access_key", re.IGNORECASE)
REDACTED = "***"
TEST_METRICS_FILE = "test_metrics.json"  # in model/, beside the final model: its test loss and accuracy


def new_run_id() -> str:
    """Readable, unique and sortable by start time: 20261122-143015-3fa9c1 (UTC)."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def redact(config: Any) -> Any:
    """A copy of `config` with the values of secret-looking keys replaced by ***."""
    if isinstance(config, dict):
        return {
            key: REDACTED if _SECRET_KEY.search(str(key)) and value is not None else redact(value)
            for key, value in config.items()
        }
    if isinstance(config, list):
        return [redact(value) for value in config]
    return config


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Run:
    """One run's folder in a storage."""

    def __init__(self, storage: Storage, run_id: str):
        self.storage = storage
        self.id = run_id
        self.path = storage.join(run_id)
        self.uri = storage.uri_of(run_id)

    def _write_json(self, name: str, data: dict) -> None:
        self.storage.write_bytes(f"{self.path}/{name}", json.dumps(data, indent=2).encode())

    def _read_json(self, name: str) -> dict:
        return json.loads(self.storage.read_bytes(f"{self.path}/{name}"))

    def write_config(self, config: dict) -> None:
        """Save the resolved config with secrets redacted."""
        text = yaml.safe_dump(redact(config), sort_keys=False)
        self.storage.write_bytes(f"{self.path}/config.yaml", text.encode())

    def config(self) -> dict:
        """The saved (redacted) config."""
        return yaml.safe_load(self.storage.read_bytes(f"{self.path}/config.yaml"))

    def status(self) -> dict:
        """The content of status.json."""
        return self._read_json("status.json")

    def set_status(self, status: str, error: str | None = None) -> None:
        """Record a status transition with its time; `error` explains a FAILED or STOPPED run."""
        if status not in STATUSES:
            raise ValueError(f"status={status!r}; expected one of {', '.join(STATUSES)}")
        record = self.status() if self.storage.exists(f"{self.path}/status.json") else {"created": _now()}
        record |= {"run_id": self.id, "status": status, "updated": _now()}
        if status == "RUNNING":
            record.setdefault("started", record["updated"])
        if status in ENDED:
            record["ended"] = record["updated"]
        record["error"] = error
        self._write_json("status.json", record)

    def mark_resumed(self) -> None:
        """Record that the run is being resumed (status.json keeps the times of every resume)."""
        record = self.status()
        record["resumed"] = [*record.get("resumed", []), _now()]
        self._write_json("status.json", record)

    def record_epoch(self, metrics: dict[str, Any]) -> None:
        """Add one epoch's row to metrics.parquet, replacing an earlier row of the same epoch (after a restart)."""
        rows = [row for row in self.metrics() if row["epoch"] != metrics["epoch"]] + [metrics]
        rows.sort(key=lambda row: row["epoch"])
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buffer)
        self.storage.write_bytes(f"{self.path}/metrics.parquet", buffer.getvalue())

    def metrics(self) -> list[dict[str, Any]]:
        """The metrics history, one dict per epoch, oldest first."""
        path = f"{self.path}/metrics.parquet"
        if not self.storage.exists(path):
            return []
        return pq.read_table(io.BytesIO(self.storage.read_bytes(path))).to_pylist()

    def test_metrics(self) -> dict[str, float]:
        """The final model's test metrics, stored beside it by the worker that saved it."""
        return self._read_json(f"model/{TEST_METRICS_FILE}")

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Save summary.json."""
        self._write_json("summary.json", summary)

    def summary(self) -> dict:
        """The content of summary.json."""
        return self._read_json("summary.json")


class RunStore:
    """Creates and finds runs in one storage."""

    def __init__(self, storage: Storage):
        self.storage = storage

    def create(self, config: dict, versions: dict[str, str], run_id: str | None = None) -> Run:
        """A new run folder (a new id unless one is given) holding the config and a PENDING status that records
        the library versions."""
        run = Run(self.storage, run_id or new_run_id())
        run.write_config(config)
        run._write_json("status.json", {"created": _now(), "versions": versions})
        run.set_status("PENDING")
        return run

    def get(self, run_id: str) -> Run:
        """An existing run; ValueError if there is none by that id."""
        run = Run(self.storage, run_id)
        if not self.storage.exists(f"{run.path}/status.json"):
            raise ValueError(f"no run {run_id!r} in {self.storage.uri}")
        return run

    def list(self) -> list[Run]:
        """Every run in the storage, oldest first."""
        return [
            Run(self.storage, name)
            for name in self.storage.list_folders(self.storage.root)
            if self.storage.exists(self.storage.join(name, "status.json"))
        ]
