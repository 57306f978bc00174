"""The run store on local storage: ids, status transitions, metrics history, redaction, atomic writes."""

import logging
import re
from datetime import datetime
from pathlib import Path

import pytest

from dltrain.config import completed_config
from dltrain.errors import DltrainError
from dltrain.job import StorageConfig
from dltrain.lifecycle import recorded
from dltrain.runs import RunStore, new_run_id, redact
from dltrain.storage import open_storage


@pytest.fixture
def store(tmp_path):
    return RunStore(open_storage(StorageConfig(uri=str(tmp_path / "runs"))))


def test_run_ids_are_readable_unique_and_time_sortable():
    ids = [new_run_id() for _ in range(50)]
    assert all(re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", run_id) for run_id in ids)
    assert len(set(ids)) == 50


def test_run_ids_and_status_times_order_by_the_microsecond_without_waiting(store):
    ids = [new_run_id() for _ in range(50)]
    assert ids == sorted(ids)  # the second, then the microsecond
    run = store.create({}, {})
    times = []
    for status in ("RUNNING", "STOPPED"):
        run.set_status(status)
        times.append(datetime.fromisoformat(run.status()["updated"]))
    assert times[0] < times[1]


def test_relative_storage_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = open_storage(StorageConfig(uri="relative/runs"))
    assert storage.root == str(tmp_path / "relative" / "runs")


def test_status_lifecycle_records_times_and_errors(store):
    run = store.create({"trainer": {"epochs": 1}}, {"ray": "2.60.0"})
    assert run.status()["status"] == "PENDING" and run.status()["versions"] == {"ray": "2.60.0"}
    run.set_status("RUNNING")
    run.set_status("FAILED", "worker 0: out of memory")
    status = run.status()
    assert status["status"] == "FAILED" and status["error"] == "worker 0: out of memory"
    assert status["created"] <= status["started"] <= status["ended"]
    with pytest.raises(ValueError, match="status='DONE'; expected one of PENDING"):
        run.set_status("DONE")


def test_a_failure_ends_in_its_error_line_and_logs_its_traceback(store, caplog):
    """Tune hands on a failure in its own handlers as a traceback in text: the run's error is its last line."""
    run = store.create({}, {})
    tune_error = RuntimeError("Traceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 'epoch'\n")
    with caplog.at_level(logging.INFO), pytest.raises(DltrainError) as raised, recorded(run):
        raise tune_error
    assert str(raised.value) == f"run {run.id} FAILED: KeyError: 'epoch' (logs: {run.uri}/logs)"
    assert run.status()["status"] == "FAILED" and run.status()["error"] == "KeyError: 'epoch'"
    record = caplog.records[-1]  # the whole traceback, at INFO: for the driver log, not the console
    assert record.exc_info[1] is tune_error and record.levelno == logging.INFO


def test_metrics_history_replaces_a_repeated_epoch(store):
    run = store.create({}, {})
    for epoch, loss in [(1, 0.9), (2, 0.7), (2, 0.6), (3, 0.5)]:
        run.record_epoch({"epoch": epoch, "loss": loss})
    assert run.metrics() == [{"epoch": 1, "loss": 0.9}, {"epoch": 2, "loss": 0.6}, {"epoch": 3, "loss": 0.5}]


def test_writes_leave_no_partial_files(store):
    run = store.create({"a": 1}, {})
    run.record_epoch({"epoch": 1, "loss": 1.0})
    assert sorted(path.name for path in Path(run.path).iterdir()) == ["config.yaml", "metrics.parquet", "status.json"]


def test_list_and_get_find_runs(store):
    first, second = store.create({}, {}), store.create({}, {})
    assert [run.id for run in store.list()] == sorted([first.id, second.id])
    assert store.get(first.id).id == first.id
    with pytest.raises(ValueError, match="no run 'nope'"):
        store.get("nope")


def test_secrets_are_redacted_in_the_saved_config(store):
    config = {"storage": {"secret_key": "s3cr3t", "access_key_id": "AKIA", "region": "eu"}, "token": None}
    run = store.create(config, {})
    saved = run.config()
    assert saved == {"storage": {"secret_key": "***", "access_key_id": "***", "region": "eu"}, "token": None}
    assert "s3cr3t" not in (store.storage.read_bytes(f"{run.path}/config.yaml")).decode()
    assert redact([{"password": "x"}]) == [{"password": "***"}]


def test_a_run_saved_before_new_keys_resumes_with_their_defaults():
    defaults = {
        "trainer": {"epochs": 30, "lr_schedule": "constant"},
        "model": {"_target_": "dltrain.models.cnn.build_cnn", "dropout": 0.4, "batch_norm": False},
        "sweep": None,
    }
    saved = {"trainer": {"epochs": 5}, "model": {"_target_": "dltrain.models.cnn.build_cnn", "dropout": 0.2}}
    assert completed_config(saved, defaults) == {
        "trainer": {"epochs": 5, "lr_schedule": "constant"},
        "model": {"_target_": "dltrain.models.cnn.build_cnn", "dropout": 0.2, "batch_norm": False},
        "sweep": None,
    }
    own_model = {"_target_": "mine.build", "width": 3}  # another builder's keys are never added
    assert completed_config({**saved, "model": own_model}, defaults)["model"] == own_model
