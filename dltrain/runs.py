"""The run store: one folder per run id holding config, status, metrics history, summary and artifacts.

<storage>/<run id>/config.yaml        resolved config, secrets redacted (redaction.py)
                   provenance.json    the command line, dltrain's git commit, the data's md5s (provenance.py)
                   status.json        PENDING / RUNNING / COMPLETED / FAILED / STOPPED, timestamps, error, and
                                      the driver (who, where) and its heartbeat while PENDING or
                                      RUNNING, `deleting` while `runs delete` removes it
                   metrics.parquet    one row per epoch
                   summary.json       written once a run has ended
                   stop_request.json  written by `dltrain runs stop`: rank 0 ends the run at its next epoch end
                   model/model.keras  the final model, model/test_metrics.json its test loss and accuracy and
                                      model/confusion_matrix.json its test predictions by true class
                   plots/             curves.png and confusion_matrix.png, drawn when the run completes
                   checkpoints/       Ray Train checkpoints, one per epoch (the newest few are kept)
                   tensorboard/, logs/
"""

import contextlib
import getpass
import hashlib
import io
import json
import logging
import os
import re
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from dltrain.errors import DltrainError
from dltrain.redaction import redact
from dltrain.retrying_fs import StorageUnavailable
from dltrain.stage import pid_alive
from dltrain.storage import Storage, cache_dir

log = logging.getLogger(__name__)

STATUSES = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "STOPPED")
ENDED = ("COMPLETED", "FAILED", "STOPPED")
LIVE = ("PENDING", "RUNNING")  # a driver beats for the run: it is starting, or training
TEST_METRICS_FILE = "test_metrics.json"  # in model/, beside the final model: its test loss and accuracy
MODEL_FILE = "model.keras"  # in model/: the final Keras model (and in every checkpoint)
CONFUSION_MATRIX_FILE = "confusion_matrix.json"  # in model/: {class_names, matrix[true class][predicted class]}
STOP_REQUEST_FILE = "stop_request.json"
PROVENANCE_FILE = "provenance.json"
# While a run is PENDING or RUNNING its driver refreshes status.json's `heartbeat` this often; a reader can take such
# a run whose heartbeat is minutes old for one whose driver died. Each refresh gives up after this long in an
# outage: the next one tries again.
HEARTBEAT_SECONDS = 15
# A PENDING or RUNNING run whose heartbeat is older than this is shown as LOST: its driver died without saying so.
# (status.json also names the driver, {host, pid, ...}: on its own machine, a driver that is gone is seen at once.)
LOST_AFTER_SECONDS = 120
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # a run id, a sweep's or a trial's: no path, no glob
MAX_RUN_ID = 128  # characters: a file name may have 255 bytes, and a longer id is no id dltrain made
# The start time of the last run id this process made (new_run_id), and its guard.
_last_start = datetime.min.replace(tzinfo=timezone.utc)
_start_lock = threading.Lock()
# A final status (COMPLETED, FAILED, STOPPED) is retried for this many of the storage's retry windows before it
# is kept on this machine instead (pending_dir()), to be written by the next command that opens the storage.
FINAL_STATUS_WINDOWS = 2


class StatusPending(DltrainError):
    """A run's final status could not be stored; it is kept on this machine until the storage answers."""


def pending_dir(storage: Storage) -> Path:
    """Where this machine keeps the final statuses that `storage` did not take: one JSON file per run."""
    return cache_dir() / "pending" / hashlib.sha256(storage.uri.encode()).hexdigest()[:16]


def new_run_id() -> str:
    """Readable, unique and sortable by start time: 20261122-143015-3fa9c1 is the UTC second, then its microsecond
    (5 hex digits, 00000-f423f) and a random hex digit. The ids one process makes are strictly increasing."""
    global _last_start
    with _start_lock:
        start = _last_start = max(datetime.now(timezone.utc), _last_start + timedelta(microseconds=1))
    return f"{start:%Y%m%d-%H%M%S}-{start.microsecond:05x}{secrets.randbelow(16):x}"


def check_run_id(run_id: str) -> str:
    """`run_id` if it can be a run id (letters, digits, - and _, at most MAX_RUN_ID long); ValueError otherwise (a
    path, a glob, ..)."""
    if len(run_id) > MAX_RUN_ID:
        raise ValueError(f"{run_id[:24]!r}... ({len(run_id):,} characters) is not a run id: at most {MAX_RUN_ID}")
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"{run_id!r} is not a run id (e.g. 20261201-151911-332926): letters, digits, - and _ only")
    return run_id


def _process_started(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot (Linux's /proc): with the pid, it names one process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_driver() -> dict[str, Any]:
    """This process as a run's driver: where it runs, and a token that no other driver has."""
    pid = os.getpid()
    return {"user": getpass.getuser(), "host": socket.gethostname(), "pid": pid, "started": _process_started(pid),
            "token": secrets.token_hex(8)}  # fmt: skip


def _driver_gone(driver: dict | None) -> bool:
    """Whether status.json's `driver` is a process of this machine that no longer exists."""
    if not driver or driver.get("host") != socket.gethostname():
        return False
    if not pid_alive(driver["pid"]):
        return True
    started = _process_started(driver["pid"])  # a pid of this machine given to another process since
    return None not in (started, driver.get("started")) and started != driver["started"]


def observed_status(record: dict, now: datetime | None = None) -> str:
    """A status.json's status as a reader should take it: LOST for a PENDING or RUNNING run whose driver stopped
    beating, or died on this machine."""
    status = record.get("status", "PENDING")
    heartbeat = record.get("heartbeat") or record.get("updated")
    if status not in LIVE or heartbeat is None:
        return status
    if _driver_gone(record.get("driver")):
        return "LOST"
    age = (now or datetime.now(timezone.utc)) - datetime.fromisoformat(heartbeat)
    return "LOST" if age.total_seconds() > LOST_AFTER_SECONDS else status


def check_not_live(run_id: str, record: dict) -> None:
    """ValueError naming its driver where the run of status.json `record` is PENDING or RUNNING with a live
    driver: another process must not resume it."""
    status = observed_status(record)
    if status in LIVE:
        raise ValueError(
            f"run {run_id} is {status}: {_age(record)}; stop it first (dltrain runs stop {run_id}), "
            f"or resume it once it is LOST ({LOST_AFTER_SECONDS} s without a heartbeat)"
        )


def _age(record: dict) -> str:
    """ "its driver alice@host (pid 12) beat 14 s ago": who keeps a live run alive."""
    driver = record.get("driver") or {}
    heartbeat = record.get("heartbeat") or record.get("updated")
    seconds = (datetime.now(timezone.utc) - datetime.fromisoformat(heartbeat)).total_seconds() if heartbeat else None
    who = f"its driver {driver.get('user', '?')}@{driver.get('host', '?')} (pid {driver.get('pid', '?')})"
    return who + (f" beat {max(seconds, 0):.0f} s ago" if seconds is not None else "")


def _now() -> str:
    """This moment, to the microsecond: a status written after another is newer (older runs kept whole seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class Run:
    """One run's folder in a storage."""

    def __init__(self, storage: Storage, run_id: str):
        self.storage = storage
        self.id = run_id
        self.path = storage.join(run_id)
        self.uri = storage.uri_of(run_id)
        self._driver: dict | None = None  # this process's, where it drives the run (this_driver)
        self._stop_heartbeat = threading.Event()
        self._beating = False

    def _write_json(self, name: str, data: dict) -> None:
        self.storage.write_bytes(f"{self.path}/{name}", json.dumps(data, indent=2).encode())

    def _read_json(self, name: str) -> dict:
        return self.storage.read_json(f"{self.path}/{name}")

    def write_config(self, config: dict) -> None:
        """Save the resolved config (config.to_mapping of a Job) with secrets redacted."""
        text = yaml.safe_dump(redact(config), sort_keys=False)
        self.storage.write_bytes(f"{self.path}/config.yaml", text.encode())

    def config(self) -> dict:
        """The saved (redacted) config."""
        return yaml.safe_load(self.storage.read_bytes(f"{self.path}/config.yaml"))

    def status(self) -> dict:
        """The content of status.json."""
        return self._read_json("status.json")

    def _update_status(self, change: Callable[[dict], dict | None], storage: Storage | None = None) -> dict | None:
        """Read status.json, apply `change` (None: leave it as it is) and write it back, atomically against every
        other writer of it (Storage.update_json); returns it as it is then."""
        return (storage or self.storage).update_json(
            f"{self.path}/status.json", lambda record: change(record if record is not None else {"created": _now()})
        )

    def set_status(self, status: str, error: str | None = None) -> None:
        """Record a status transition with its time; `error` explains a FAILED or STOPPED run.

        A final status is retried through FINAL_STATUS_WINDOWS retry windows of the storage; if the storage still
        does not answer, it is kept on this machine (StatusPending says where) and written by the next command
        that opens this storage (RunStore.write_pending).
        """
        if status not in STATUSES:
            raise ValueError(f"status={status!r}; expected one of {', '.join(STATUSES)}")
        now = _now()
        fields = {"run_id": self.id, "status": status, "updated": now, "error": error}
        if status in LIVE:
            fields["heartbeat"] = now
            if self._driver is not None:
                fields["driver"] = self._driver
        if status in ENDED:
            fields["ended"] = now
            self._stop_heartbeat.set()  # no heartbeat write may land after this one

        def change(record: dict) -> dict:
            changed = record | fields
            if status == "RUNNING":
                changed.setdefault("started", now)
            if status in ENDED:
                changed.pop("driver", None)  # nobody drives it now
            return changed

        for _ in range(FINAL_STATUS_WINDOWS if status in ENDED else 1):
            try:
                self._update_status(change)
                return
            except StorageUnavailable as unavailable:
                if status not in ENDED:
                    raise
                failure = unavailable
        kept = pending_dir(self.storage) / f"{self.id}.json"
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps(fields))
        raise StatusPending(
            f"run {self.id} is {status} but {failure}; the status is kept in {kept} and written to {self.uri} "
            "by the next dltrain command on that storage (resume= does it)"
        )

    @contextlib.contextmanager
    def heartbeat(self, seconds: float = HEARTBEAT_SECONDS) -> Iterator[None]:
        """While the block runs, refresh status.json's `heartbeat` every `seconds` as long as the run is PENDING
        or RUNNING with this process as its driver; none is written once the block has ended, a final status is
        set, or the run is being deleted. A block inside another beats through the outer one."""
        if self._beating:
            yield
            return
        storage = self.storage.with_retry_seconds(seconds)

        def beat(record: dict) -> dict | None:
            mine = self._driver is not None and (record.get("driver") or {}).get("token") == self._driver["token"]
            if self._stop_heartbeat.is_set() or not mine or record.get("status") not in LIVE or "deleting" in record:
                return None
            return record | {"heartbeat": _now()}

        def refresh() -> None:
            while not self._stop_heartbeat.wait(seconds):
                try:
                    self._update_status(beat, storage)
                except OSError as error:  # an outage: the next beat tries again
                    log.info("run %s: heartbeat not stored: %s", self.id, error)

        self._stop_heartbeat.clear()
        self._beating = True
        thread = threading.Thread(target=refresh, name=f"dltrain-heartbeat-{self.id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop_heartbeat.set()
            thread.join()  # at most one write in flight, which gives up within `seconds`
            self._beating = False

    def claim(self) -> None:
        """Make this process the driver of the run, to resume it: it is PENDING again, beating for this process,
        and status.json records the resume. Atomic against other claims and deletions (Storage.update_json);
        ValueError naming why not where it is COMPLETED, being deleted, or PENDING or RUNNING with a live driver
        (one whose heartbeat is fresh; LOST may be resumed)."""
        driver = this_driver()

        def take(record: dict) -> dict:
            if "status" not in record:
                raise ValueError(f"run {self.id} was deleted meanwhile")
            check_not_live(self.id, record)
            status = observed_status(record)
            if "deleting" in record:
                raise ValueError(f"run {self.id} is being deleted (since {record['deleting']}): delete it again")
            if status == "COMPLETED":
                raise ValueError(f"run {self.id} is COMPLETED: there is nothing to resume")
            now = _now()
            resumed = [*record.get("resumed", []), now]
            return record | {
                "status": "PENDING",
                "updated": now,
                "heartbeat": now,
                "driver": driver,
                "resumed": resumed,
            }

        self._update_status(take)
        self._driver = driver

    def mark_deleting(self, force: bool) -> None:
        """Say in status.json that the run is being deleted, so that nothing resumes it meanwhile; ValueError if it
        is PENDING or RUNNING with a live driver, unless `force`. Atomic against claims (Storage.update_json)."""

        def mark(record: dict) -> dict:
            if "status" not in record:
                raise ValueError(f"{self.id} was deleted meanwhile")
            status = observed_status(record)
            if status in LIVE and not force:
                raise ValueError(f"{self.id} {status}: a driver started it meanwhile; stop it first (or --force)")
            return record | {"deleting": _now()}

        self._update_status(mark)

    def unmark_deleting(self) -> None:
        """Undo mark_deleting: the run was not deleted after all."""
        self._update_status(lambda record: {k: v for k, v in record.items() if k != "deleting"})

    def request_stop(self, by: str) -> None:
        """Ask the run to stop at its next epoch end, on behalf of `by` (user@host)."""
        self._write_json(STOP_REQUEST_FILE, {"requested": _now(), "by": by})

    def stop_request(self) -> dict | None:
        """The pending stop request ({requested, by}), or None; one made before the run's latest resume is not for
        it (an S3 server may still list the file that resuming deleted)."""
        path = f"{self.path}/{STOP_REQUEST_FILE}"
        if not self.storage.exists(path):
            return None
        request = self._read_json(STOP_REQUEST_FILE)
        resumed = self.status().get("resumed", [])
        before_resume = resumed and datetime.fromisoformat(request["requested"]) < datetime.fromisoformat(resumed[-1])
        return None if before_resume else request

    def clear_stop_request(self) -> None:
        """Forget a stop request (a resumed run goes on)."""
        path = f"{self.path}/{STOP_REQUEST_FILE}"
        if self.storage.exists(path):
            self.storage.filesystem.delete_file(path)

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
        # On this thread only: a read that hands work to Arrow's thread pools (use_threads for decoding, pre_buffer
        # for I/O) can abort the process at exit ("terminate called without an active exception",
        # apache/arrow#33975; `dltrain runs list` did, once in CI with use_threads=False alone). A few KB.
        data = pa.BufferReader(self.storage.read_bytes(path))
        return pq.read_table(data, use_threads=False, pre_buffer=False).to_pylist()

    def has_final_model(self) -> bool:
        """Whether training has ended with the final model stored (and its test metrics beside it)."""
        return self.storage.exists(f"{self.path}/model/{TEST_METRICS_FILE}")

    def test_metrics(self) -> dict[str, float]:
        """The final model's test metrics, stored beside it by the worker that saved it."""
        return self._read_json(f"model/{TEST_METRICS_FILE}")

    def confusion_matrix(self) -> dict[str, list]:
        """The final model's test predictions: class_names, and matrix[true class][predicted class] counts."""
        return self._read_json(f"model/{CONFUSION_MATRIX_FILE}")

    def write_plot(self, name: str, png: bytes) -> None:
        """Store a plot as plots/`name`."""
        self.storage.write_bytes(f"{self.path}/plots/{name}", png)

    def provenance(self) -> dict | None:
        """The content of provenance.json; None for a run made before runs recorded it."""
        path = f"{self.path}/{PROVENANCE_FILE}"
        return self._read_json(PROVENANCE_FILE) if self.storage.exists(path) else None

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

    def create(
        self, config: dict, versions: dict[str, str], run_id: str | None = None, provenance: dict | None = None
    ) -> Run:
        """A new run folder (a new id unless one is given) holding the config, its provenance (if given) and a
        PENDING status that records the library versions, with this process as its driver."""
        run = Run(self.storage, run_id or new_run_id())
        run._driver = this_driver()
        run.write_config(config)
        if provenance is not None:
            run._write_json(PROVENANCE_FILE, provenance)
        run._write_json("status.json", {"created": _now(), "versions": versions})
        run.set_status("PENDING")
        return run

    def write_pending(self) -> None:
        """Store the final statuses this machine kept for this storage while it was unreachable.

        A status is written only over an older one: a run resumed and ended elsewhere since keeps its newer status.
        """
        for kept in sorted(pending_dir(self.storage).glob("*.json")):
            fields = json.loads(kept.read_text())
            run = Run(self.storage, fields["run_id"])

            def newer(record: dict, fields: dict = fields) -> dict | None:
                stored, kept = record.get("updated"), datetime.fromisoformat(fields["updated"])
                return None if stored and datetime.fromisoformat(stored) > kept else record | fields

            run._update_status(newer)
            kept.unlink()
            log.info("run %s: stored its %s status kept in %s", run.id, fields["status"], kept)

    def get(self, run_id: str) -> Run:
        """An existing run; ValueError if there is none by that id, or it is not a run id."""
        run = Run(self.storage, check_run_id(run_id))
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
