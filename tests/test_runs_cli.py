"""`dltrain runs ...` as a user runs it, over a real run's folder on local storage and on S3."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.fs
import pyarrow.parquet as pq
import pytest
from s3server import create_bucket

DLTRAIN = str(Path(sys.executable).parent / "dltrain")  # the console script, as installed
LIST_KEYS = {
    "id", "kind", "model", "dataset", "status", "workers", "epochs_done", "epochs", "best_val_accuracy",
    "test_accuracy", "started", "ended", "duration_seconds", "error", "uri",
}  # fmt: skip


def _dltrain(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([DLTRAIN, *args], capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def storage(real_data, tmp_path_factory) -> Path:
    """A storage holding one real 2-epoch run and a copy of it whose driver died (RUNNING, heartbeat 5 min old)."""
    folder = tmp_path_factory.mktemp("runs")
    trained = _dltrain(
        "train", "trainer.epochs=2", "dataset.limit=1280", "trainer.batch_size=64", f"dataset.path={real_data}",
        f"storage.uri={folder}", "trainer.progress=epochs",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    (completed,) = [path for path in folder.iterdir() if path.is_dir()]
    lost = _copy_run(completed, folder, f"{completed.name[:-6]}ffffff", "RUNNING", 300)  # sorts after it
    (lost / "summary.json").unlink()
    return folder


def _copy_run(source: Path, storage: Path, run_id: str, status: str, heartbeat_age_s: float = 0) -> Path:
    """A copy of a real run's folder under another id and status (RUNNING: with a heartbeat that old)."""
    copy = storage / run_id
    shutil.copytree(source, copy)
    record = json.loads((copy / "status.json").read_text())
    beat = (datetime.now(timezone.utc) - timedelta(seconds=heartbeat_age_s)).isoformat(timespec="seconds")
    record |= {"run_id": run_id, "status": status, "heartbeat": beat}
    (copy / "status.json").write_text(json.dumps(record))
    return copy


def _ids(storage: Path) -> tuple[str, str]:
    completed, lost = sorted(path.name for path in storage.iterdir() if path.is_dir())
    return completed, lost


@pytest.mark.slow
def test_runs_list_shows_each_run_newest_first_with_lost_ones_marked(storage):
    completed, lost = _ids(storage)
    result = _dltrain("runs", "list", "--storage", str(storage))
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split("  ")[0] == "id" and "best val_acc" in header and header.endswith("duration")
    assert [row.split()[0] for row in rows] == [lost, completed]
    cells = rows[1].split()
    summary = json.loads((storage / completed / "summary.json").read_text())
    assert cells[1:6] == ["cnn", "fashion_mnist", "COMPLETED", "1", "2/2"]
    assert cells[7] == f"{summary['test_accuracy']:.4f}"
    assert rows[0].split()[3] == "LOST" and rows[0].split()[7] == "-"  # RUNNING, but nobody beats for it


@pytest.mark.slow
def test_runs_list_filters_and_its_json_has_every_key(storage):
    completed, lost = _ids(storage)
    listed = json.loads(_dltrain("runs", "list", "--json", "--storage", str(storage)).stdout)
    assert [item["id"] for item in listed] == [lost, completed]
    assert all(set(item) == LIST_KEYS for item in listed)
    item = listed[1]
    assert (item["kind"], item["status"], item["epochs_done"], item["epochs"]) == ("run", "COMPLETED", 2, 2)
    assert 0 < item["best_val_accuracy"] <= 1 and item["duration_seconds"] > 0
    assert item["uri"] == str(storage / completed)
    lost_only = json.loads(_dltrain("runs", "list", "--json", "--status", "LOST", "--storage", str(storage)).stdout)
    assert [item["id"] for item in lost_only] == [lost]
    newest = json.loads(_dltrain("runs", "list", "--json", "--limit", "1", "--storage", str(storage)).stdout)
    assert [item["id"] for item in newest] == [lost]
    env = {**os.environ, "DLTRAIN_STORAGE": str(storage)}  # the same default storage as training
    assert _dltrain("runs", "list", "--status", "FAILED", env=env).stdout.strip() == "no runs"


@pytest.mark.slow
def test_runs_show_gives_status_config_changes_epochs_summary_and_files(storage):
    completed, _ = _ids(storage)
    result = _dltrain("runs", "show", completed, "--storage", str(storage))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.splitlines()[0] == f"run {completed}  COMPLETED  -> {storage / completed}"
    assert "config, where it differs from the defaults:" in text
    changes = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.startswith("  trainer.")}
    assert changes["trainer.epochs"] == ["2", "30"] and changes["trainer.batch_size"] == ["64", "128"]
    assert "trainer.learning_rate" not in changes  # left at its default
    epochs = text.split("epochs:\n")[1].split("summary:")[0].splitlines()
    assert epochs[0].split()[:5] == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert [line.split()[0] for line in epochs[1:]] == ["1", "2"]
    assert "summary: run_id" in text and "test_accuracy" in text
    assert "  model/model.keras  " in text and "  config.yaml  " in text

    shown = json.loads(_dltrain("runs", "show", completed, "--json", "--storage", str(storage)).stdout)
    assert set(shown) == {"overview", "status", "config_changes", "epochs", "summary", "files"}
    assert shown["config_changes"]["trainer.epochs"] == {"value": 2, "default": 30}
    assert [row["epoch"] for row in shown["epochs"]] == [1, 2]
    assert shown["summary"]["status"] == "COMPLETED" and shown["files"]["model/model.keras"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["runs", "show", "../../etc"], "'../../etc' is not a run id"),
        (["runs", "show", "2026*"], "'2026*' is not a run id"),
        (["runs", "show", "20990101-000000-abcdef"], "no run '20990101-000000-abcdef' in "),
        (["runs", "list", "--status", "DONE"], "argument --status: invalid choice: 'DONE' (choose from 'PENDING',"),
        (["runs", "list", "--limit", "0"], "--limit 0: expected an integer >= 1"),
        (["runs", "list", "--sweep", "../x"], "--sweep: '../x' is not a run id"),
        (["runs", "list", "--storage", "ftp://host/runs"], "storage: storage.uri=ftp://host/runs: expected a local"),
        (["runs", "frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_exits_2_in_one_line(args, message, tmp_path):
    result = _dltrain(*args, *([] if "--storage" in args else ["--storage", str(tmp_path)]))
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_every_command_has_help():
    for command in (["--help"], ["runs", "--help"], ["runs", "list", "--help"], ["runs", "show", "--help"]):
        result = _dltrain(*command)
        assert result.returncode == 0 and result.stdout.startswith("usage: dltrain"), command
    assert "== Configuration groups ==" in _dltrain("train", "--help").stdout  # Hydra's own help


@pytest.mark.slow
def test_runs_list_show_download_and_delete_on_s3(storage, s3_session_server, tmp_path):
    server = s3_session_server
    bucket = create_bucket(server)
    pyarrow.fs.copy_files(str(storage), f"{bucket}/team/runs", destination_filesystem=server.arrow_fs())
    completed, lost = _ids(storage)
    options = ["--storage", f"s3://{bucket}/team/runs", "--endpoint-url", server.endpoint_url]
    env = {**os.environ, **server.env()}
    listed = json.loads(_dltrain("runs", "list", "--json", *options, env=env).stdout)
    assert [(item["id"], item["status"]) for item in listed] == [(lost, "LOST"), (completed, "COMPLETED")]
    assert listed[1]["uri"] == f"s3://{bucket}/team/runs/{completed}"
    shown = json.loads(_dltrain("runs", "show", completed, "--json", *options, env=env).stdout)
    assert shown["files"]["model/model.keras"] == (storage / completed / "model" / "model.keras").stat().st_size
    missing = _dltrain("runs", "list", "--storage", "s3://no-such-bucket-here/x", *options[2:], env=env)
    assert missing.returncode == 2 and "no-such-bucket-here" in missing.stderr
    model = tmp_path / "model"
    assert _dltrain("runs", "download", completed, str(model), "--model-only", *options, env=env).returncode == 0
    assert (model / "model.keras").read_bytes() == (storage / completed / "model" / "model.keras").read_bytes()
    deleted = _dltrain("runs", "delete", lost, "--yes", *options, env=env)
    assert deleted.returncode == 0, deleted.stderr
    keys = [item["Key"] for item in server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert not any(f"/{lost}/" in key for key in keys) and any(f"/{completed}/" in key for key in keys)


@pytest.mark.slow
def test_runs_logs_prints_the_driver_or_a_workers_log(storage):
    completed, _ = _ids(storage)
    logs = storage / completed / "logs"
    driver = _dltrain("runs", "logs", completed, "--storage", str(storage))
    assert driver.returncode == 0 and driver.stdout == (logs / "driver.log").read_text()
    (worker_log,) = logs.glob("worker-0-pid*.log")
    worker = _dltrain("runs", "logs", completed, "--worker", "0", "--storage", str(storage))
    assert worker.returncode == 0 and worker.stdout == worker_log.read_text()
    missing = _dltrain("runs", "logs", completed, "--worker", "3", "--storage", str(storage))
    assert missing.returncode == 2 and f"run {completed} has no worker 3 log in " in missing.stderr


@pytest.mark.slow
def test_runs_logs_follow_prints_what_is_added_until_the_run_ends(storage, tmp_path):
    completed, _ = _ids(storage)
    running = _copy_run(storage / completed, tmp_path, "20261201-000000-aaaaaa", "RUNNING")
    (log,) = (running / "logs").glob("worker-0-pid*.log")
    last_line = log.read_text().splitlines()[-1]
    process = subprocess.Popen(
        [DLTRAIN, "runs", "logs", running.name, "--worker", "0", "--follow", "--storage", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    watchdog = threading.Timer(120, process.kill)  # a hang fails the test instead of stalling the suite
    watchdog.start()
    try:
        assert f"{last_line}\n" in iter(process.stdout.readline, "")  # the log so far
        with log.open("a") as appending:
            appending.write("epoch 3 of a worker that goes on\n")  # as the worker's next upload would
        assert "epoch 3 of a worker that goes on\n" in iter(process.stdout.readline, "")
        record = json.loads((running / "status.json").read_text()) | {"status": "COMPLETED"}
        (running / "status.json").write_text(json.dumps(record))
        assert process.wait() == 0  # the run ended: so does --follow
    finally:
        watchdog.cancel()
        process.kill()


@pytest.mark.slow
def test_runs_metrics_as_a_table_and_as_csv(storage):
    completed, _ = _ids(storage)
    history = pq.read_table(storage / completed / "metrics.parquet").to_pylist()
    table = _dltrain("runs", "metrics", completed, "--storage", str(storage)).stdout.splitlines()
    assert table[0].split() == list(history[0]) and [line.split()[0] for line in table[1:]] == ["1", "2"]
    rows = list(
        csv.DictReader(io.StringIO(_dltrain("runs", "metrics", completed, "--csv", "--storage", str(storage)).stdout))
    )
    assert [float(row["val_accuracy"]) for row in rows] == [row["val_accuracy"] for row in history]  # full precision


@pytest.mark.slow
def test_runs_download_copies_the_folder_or_the_model_whole(storage, tmp_path):
    completed, _ = _ids(storage)
    whole = _dltrain("runs", "download", completed, str(tmp_path / "whole"), "--storage", str(storage))
    assert whole.returncode == 0, whole.stderr
    assert sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole").rglob("*") if p.is_file()) == sorted(
        p.relative_to(storage / completed) for p in (storage / completed).rglob("*") if p.is_file()
    )
    model = _dltrain("runs", "download", completed, str(tmp_path / "model"), "--model-only", "--storage", str(storage))
    assert model.returncode == 0 and sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "model.keras", "test_metrics.json",
    ]  # fmt: skip
    again = _dltrain("runs", "download", completed, str(tmp_path / "model"), "--storage", str(storage))
    assert again.returncode == 2 and "exists: give a folder that does not exist yet" in again.stderr


@pytest.mark.slow
def test_runs_delete_removes_whole_folders_and_refuses_running_runs_and_bad_ids(storage, tmp_path):
    completed, _ = _ids(storage)
    first = _copy_run(storage / completed, tmp_path, "20261201-000000-aaaaaa", "COMPLETED")
    second = _copy_run(storage / completed, tmp_path, "20261201-000000-bbbbbb", "FAILED")
    live = _copy_run(storage / completed, tmp_path, "20261201-000000-cccccc", "RUNNING")
    options = ["--storage", str(tmp_path)]
    refused = _dltrain("runs", "delete", first.name, live.name, "--yes", *options)
    assert refused.returncode == 2 and f"{live.name} RUNNING: stop it first (or --force)" in refused.stderr
    unasked = _dltrain("runs", "delete", first.name, *options)  # no terminal to ask on
    assert unasked.returncode == 2 and "needs --yes" in unasked.stderr
    traversal = _dltrain("runs", "delete", first.name, "..", "--yes", *options)
    assert traversal.returncode == 2 and "'..' is not a run id" in traversal.stderr
    assert first.is_dir() and second.is_dir() and live.is_dir()  # nothing went while any id was refused
    deleted = _dltrain("runs", "delete", first.name, second.name, "--yes", *options)
    assert deleted.returncode == 0 and deleted.stdout.splitlines() == [
        f"deleted {first.name} ({first})", f"deleted {second.name} ({second})",
    ]  # fmt: skip
    assert not first.exists() and not second.exists() and live.is_dir()
    assert _dltrain("runs", "delete", live.name, "--yes", "--force", *options).returncode == 0
    assert not live.exists()
