"""`dltrain runs ...` as a user runs it, over a real run's folder on local storage and on S3."""

import argparse
import csv
import getpass
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.fs
import pyarrow.parquet as pq
import pytest

from dltrain.cli import main as cli
from dltrain.data import fashion_mnist
from dltrain.job import StorageConfig
from dltrain.runs import RunStore
from dltrain.storage import open_storage

from helpers.s3server import create_bucket

DLTRAIN = str(Path(sys.executable).parent / "dltrain")  # the console script, as installed
LIST_KEYS = {
    "id", "kind", "model", "dataset", "status", "workers", "epochs_done", "epochs", "best_val_accuracy",
    "test_accuracy", "started", "ended", "duration_seconds", "error", "uri",
}  # fmt: skip


def _dltrain(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([DLTRAIN, *args], capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def storage(completed_run, tmp_path_factory) -> Path:
    """A storage holding one real 2-epoch run and a copy of it whose driver died (RUNNING, heartbeat 5 min old)."""
    folder = tmp_path_factory.mktemp("runs")
    completed = folder / completed_run.name
    shutil.copytree(completed_run, completed)
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
        (["runs", "show", "a" * 300], "'aaaaaaaaaaaaaaaaaaaaaaaa'... (300 characters) is not a run id: at most 128"),
        (["runs", "delete", "b" * 5000, "--yes"], "(5,000 characters) is not a run id: at most 128"),
        (["data", "prepare", "in", "out", "--shard-mb", "nan"], "argument --shard-mb: 'nan' is not a finite number"),
        (["data", "prepare", "in", "out", "--shard-mb", "inf"], "argument --shard-mb: 'inf' is not a finite number"),
    ],
)
def test_bad_input_exits_2_in_one_line(args, message, tmp_path):
    result = _dltrain(*args, *([] if "--storage" in args else ["--storage", str(tmp_path)]))
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and subcommand the parser has, as the words that name it."""
    found = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                found += _commands(subparser, (*path, name))
    return found


def test_every_command_has_help(capsys):
    commands = [command for command in _commands(cli.parser()) if command != ("train",)]
    assert {("runs", "stop"), ("runs", "compare"), ("models", "register"), ("rerun",)} <= set(commands)
    for command in commands:
        with pytest.raises(SystemExit) as exit:
            cli.main([*command, "--help"])
        assert exit.value.code == 0 and capsys.readouterr().out.startswith(f"usage: dltrain {' '.join(command)}")
    result = _dltrain("--help")  # the installed console script
    assert result.returncode == 0 and result.stdout.startswith("usage: dltrain")
    assert "== Configuration groups ==" in _dltrain("train", "--help").stdout  # Hydra's own help


@pytest.mark.slow
def test_runs_list_show_compare_download_and_delete_on_s3(storage, s3_session_server, tmp_path):
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
    plot = tmp_path / "compared.png"
    compared = json.loads(
        _dltrain("runs", "compare", completed, lost, "-o", str(plot), "--json", *options, env=env).stdout
    )
    assert compared["metrics"][lost]["status"] == "LOST" and _png_size(plot) == (1210, 484)
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
        "confusion_matrix.json", "model.keras", "test_metrics.json",
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


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file, from its header; fails if the file is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.slow
def test_runs_compare_puts_config_differences_and_metrics_side_by_side_and_plots(storage, tmp_path):
    completed, _ = _ids(storage)
    mine = tmp_path / "runs"
    first = _copy_run(storage / completed, mine, completed, "COMPLETED")
    second = _copy_run(storage / completed, mine, f"{completed[:-6]}000002", "COMPLETED")
    config = (second / "config.yaml").read_text()
    (second / "config.yaml").write_text(config.replace("learning_rate: 0.001", "learning_rate: 0.01"))
    plot = tmp_path / "both.png"
    result = _dltrain("runs", "compare", first.name, second.name, "-o", str(plot), "--storage", str(mine))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "config, where the runs differ:"
    assert lines[2].split() == ["trainer.learning_rate", "0.0010", "0.0100"]  # rerun, resume: the same (null)
    assert lines[3] == "final metrics:" and lines[-1] == f"curves: {plot}"
    summary = json.loads((first / "summary.json").read_text())
    rows = {line.split()[0]: line.split()[1:] for line in lines[4:-1]}
    assert rows["test_accuracy"] == [f"{summary['test_accuracy']:.4f}"] * 2 and rows["status"] == ["COMPLETED"] * 2
    assert _png_size(plot) == (1210, 484)  # 11 x 4.4 inches at 110 dpi
    found = json.loads(
        _dltrain("runs", "compare", first.name, second.name, "-o", str(plot), "--json", "--storage", str(mine)).stdout
    )
    assert found["config"] == {"trainer.learning_rate": [0.001, 0.01]} and found["runs"] == [first.name, second.name]
    assert found["metrics"][second.name]["epochs_done"] == 2 and found["plot"] == str(plot)
    one = tmp_path / "one.png"
    plotted = _dltrain("runs", "plot", first.name, "-o", str(one), "--storage", str(mine))
    assert plotted.stdout == f"wrote the curves of 1 run(s) to {one}\n" and _png_size(one) == (1210, 484)
    for args, message in [
        (["compare", first.name, first.name], "compare needs two or more different run ids"),
        (["plot", first.name, "-o", str(tmp_path / "x.jpg")], "the plot is a PNG: give a FILE.png"),
        (["plot", first.name, "-o", str(tmp_path / "no" / "x.png")], f"no folder {tmp_path / 'no'}"),
    ]:
        failed = _dltrain("runs", *args, "--storage", str(mine))
        assert failed.returncode == 2 and message in failed.stderr and failed.stderr.count("\n") == 1, args
    assert sorted(path.name for path in tmp_path.iterdir()) == ["both.png", "one.png", "runs"]  # nothing half-written


@pytest.mark.slow
def test_runs_stop_from_another_process_stops_at_an_epoch_end_and_ctrl_c_stops_the_resumed_run(
    real_data, s3_session_server
):
    server = s3_session_server
    bucket = create_bucket(server)
    env = {**os.environ, **server.env()}
    options = ["--storage", f"s3://{bucket}/runs", "--endpoint-url", server.endpoint_url]
    storage = ["storage=s3", f"storage.uri=s3://{bucket}/runs", f"storage.endpoint_url={server.endpoint_url}"]
    training = [*storage, "trainer.epochs=50", "dataset.limit=1280", "trainer.batch_size=64",
                f"dataset.path={real_data}", "trainer.progress=epochs"]  # fmt: skip
    process = subprocess.Popen(
        [DLTRAIN, "train", *training], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        run_id = process.stdout.readline().split()[2]  # "dltrain: run ID -> s3://...": the run exists
        # Asked before its first epoch has ended (its workers are still starting), the run stops after epoch 1.
        stopping = _dltrain("runs", "stop", run_id, *options, env=env)  # as from another terminal or machine
        rest = process.stdout.read()
        process.wait(timeout=120)
    finally:
        process.kill()
    assert stopping.returncode == 0, stopping.stderr
    assert stopping.stdout == f"dltrain: asked run {run_id} to stop; it stops at the end of its current epoch\n"
    assert process.returncode == 0, process.stderr.read()[-3000:]
    assert re.findall(r"^epoch (\d+)/50  loss", rest, re.MULTILINE) == ["1"]
    assert f"run {run_id} STOPPED: stopped after epoch 1, as " in rest and "COMPLETED" not in rest
    assert f"resume={run_id} continues it" in rest
    shown = json.loads(_dltrain("runs", "show", run_id, "--json", *options, env=env).stdout)
    status = shown["status"]
    assert status["status"] == "STOPPED" and f"stopped after epoch 1, as {getpass.getuser()}@" in status["error"]
    assert "checkpoints/epoch-0001/model.keras" in shown["files"] and [row["epoch"] for row in shown["epochs"]] == [1]
    assert not any(name.startswith("model/") for name in shown["files"]) and "summary.json" not in shown["files"]
    again = _dltrain("runs", "stop", run_id, *options, env=env)
    assert (again.returncode, again.stderr) == (2, f"dltrain: error: run {run_id} is STOPPED: only a PENDING or "
                                                   "RUNNING run can be stopped\n")  # fmt: skip

    # Resumed, the run goes past epoch 2 (the request is cleared); Ctrl-C then stops it, keeping its checkpoints.
    process = subprocess.Popen(
        [DLTRAIN, "train", f"resume={run_id}", *storage], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env,
    )  # fmt: skip
    seen = []  # what the resumed run printed, for the assertion's message
    try:
        for line in process.stdout:
            seen.append(line)
            if "epoch 3/50  loss" in line:  # the epoch line, not a progress line
                break
        process.send_signal(signal.SIGINT)
        process.wait(timeout=90)
    finally:
        process.kill()
    assert process.returncode == 130, "".join(seen)[-3000:] + process.stderr.read()[-3000:]
    shown = json.loads(_dltrain("runs", "show", run_id, "--json", *options, env=env).stdout)
    assert (shown["status"]["status"], shown["status"]["error"]) == ("STOPPED", "interrupted by the user")
    assert "checkpoints/epoch-0003/model.keras" in shown["files"] and "stop_request.json" not in shown["files"]
    assert "summary.json" not in shown["files"] and len(shown["status"]["resumed"]) == 1


@pytest.mark.slow
def test_rerun_repeats_a_deterministic_run_exactly_and_records_its_provenance(completed_run, tmp_path, real_data):
    mine = tmp_path / "runs"
    shutil.copytree(completed_run, mine / completed_run.name)
    refused = _dltrain("rerun", completed_run.name, "--storage", str(mine), "trainer.epochs=3")
    assert refused.returncode == 2 and "trainer.epochs=3 cannot change it" in refused.stderr
    assert [path.name for path in mine.iterdir()] == [completed_run.name]  # no run was made
    # The run is named through the registry, as `dltrain rerun fashion@production` would name it.
    registered = _dltrain("models", "register", completed_run.name, "--name", "fashion", "--alias", "production",
                          "--storage", str(mine))  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    result = _dltrain("rerun", "fashion@production", "--storage", str(mine))
    assert result.returncode == 0, result.stderr[-3000:]
    new_id = result.stdout.split()[2]
    assert result.stdout.startswith(f"dltrain: run {new_id} (a rerun of {completed_run.name}) -> {mine / new_id}\n")
    keys = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")
    runs = (completed_run, mine / new_id)
    original, again = (pq.read_table(run / "metrics.parquet").select(keys).to_pylist() for run in runs)
    assert again == original  # every loss and accuracy of every epoch, to the last bit (trainer.deterministic=true)
    summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
    assert summaries[0]["test_accuracy_per_class"] == summaries[1]["test_accuracy_per_class"]
    provenance = json.loads((mine / new_id / "provenance.json").read_text())
    assert provenance["command"] == f"python -m dltrain rerun=fashion@production storage.uri={mine}"
    assert provenance["rerun_of"] == completed_run.name
    first = json.loads((completed_run / "provenance.json").read_text())
    assert first["command"].startswith("python -m dltrain trainer.epochs=2 dataset.limit=1280 trainer.batch_size=64")
    assert first["rerun_of"] is None
    published = {name: md5 for name, md5 in fashion_mnist.FILES.values()}
    assert provenance["data_md5"] == first["data_md5"] == published
    # From a checkout (an editable install, as CI's), both runs record the code's commit.
    checkout = Path(__file__).parent
    head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert provenance["git"] == (first["git"] and {"commit": head.stdout.strip(), "dirty": first["git"]["dirty"]})


def test_runs_list_shows_runs_whose_files_do_not_read_as_unreadable_and_lists_the_rest(tmp_path):
    store = RunStore(open_storage(StorageConfig(uri=str(tmp_path))))
    runs = {name: store.create({"model": {"_target_": "dltrain.models.cnn.build_cnn"}, "trainer": {"epochs": 3}},
                               {}, f"20261201-00000{number}-{name}") for number, name in enumerate(
                                   ("good", "status", "config", "shape", "metric"))}  # fmt: skip
    runs["good"].set_status("COMPLETED")
    (tmp_path / runs["status"].id / "status.json").write_text('{"status": "RUNN')  # cut short
    (tmp_path / runs["config"].id / "config.yaml").write_text("model: [unclosed\n")
    (tmp_path / runs["shape"].id / "status.json").write_text("[1, 2]")
    (tmp_path / runs["metric"].id / "metrics.parquet").write_bytes(b"PAR1 not parquet at all")
    (tmp_path / "stray" / "notes").mkdir(parents=True)  # a folder without status.json: not a run
    listed = _dltrain("runs", "list", "--storage", str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[3] for line in listed.stdout.splitlines()[1:]}
    assert rows == {runs["good"].id: "COMPLETED"} | {runs[name].id: "UNREADABLE" for name in
                                                     ("status", "config", "shape", "metric")}  # fmt: skip
    items = {item["id"]: item for item in json.loads(_dltrain("runs", "list", "--json", "--storage",
                                                              str(tmp_path)).stdout)}  # fmt: skip
    assert all(set(item) == LIST_KEYS for item in items.values())
    assert items[runs["status"].id]["error"].startswith(f"run {runs['status'].id}: status.json does not read (")
    assert items[runs["config"].id]["error"].startswith(f"run {runs['config'].id}: config.yaml does not read (")
    assert items[runs["shape"].id]["error"] == f"run {runs['shape'].id}: status.json holds a list, not a dict"
    assert items[runs["metric"].id]["error"].startswith(f"run {runs['metric'].id}: metrics.parquet does not read (")
    only = _dltrain("runs", "list", "--json", "--status", "UNREADABLE", "--storage", str(tmp_path))
    assert len(json.loads(only.stdout)) == 4
    shown = _dltrain("runs", "show", runs["status"].id, "--storage", str(tmp_path))
    assert shown.returncode == 2 and shown.stderr.count("\n") == 1
    assert f"run {runs['status'].id}: status.json does not read" in shown.stderr
    assert _dltrain("runs", "list", "--limit", str(10**30), "--storage", str(tmp_path)).returncode == 0
