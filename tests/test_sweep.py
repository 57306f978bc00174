"""Sweeps: search expressions, validation of search spaces, and real Ray Tune sweeps of real training runs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow import MlflowClient

from dltrain.config import resolve
from dltrain.data.fashion_mnist import CLASS_NAMES
from dltrain.errors import DltrainError
from dltrain.search_space import Dimension, flatten, parse
from dltrain.sweep.tune_settings import param_space, scheduler, trial_count

from helpers.config import compose_config
from helpers.mlflow_server import mirrored_runs
from helpers.s3server import create_bucket

TINY = ["dataset.limit=1280", "trainer.batch_size=64"]
MLFLOW_STATUS = {"COMPLETED": "FINISHED", "STOPPED": "KILLED", "FAILED": "FAILED"}  # a run's in MLflow, by dltrain's


@pytest.mark.parametrize(
    ("expression", "dimension"),
    [
        ("uniform(0.2, 0.5)", Dimension("uniform", (0.2, 0.5))),
        ("loguniform(1e-4, 1e-2)", Dimension("loguniform", (1e-4, 1e-2))),
        ("quniform(1, 9, 2)", Dimension("quniform", (1, 9, 2))),
        ("randint(1, 4)", Dimension("randint", (1, 4))),
        ("choice([64, 128, 256])", Dimension("choice", ([64, 128, 256],))),
        ("choice(['adam', 'sgd'])", Dimension("choice", (["adam", "sgd"],))),
    ],
)
def test_search_expressions_parse(expression, dimension):
    assert parse(expression) == dimension


def test_candidates_span_each_dimension():
    assert parse("randint(1, 4)").candidates() == [1, 3]  # high is excluded, as in Ray Tune
    assert parse("loguniform(1e-4, 1e-2)").candidates() == [1e-4, 1e-2]
    assert parse("choice([[32], [32, 64]])").candidates() == [[32], [32, 64]]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+sweep.space.trainer.learnin_rate='choice([1])'"], "sweep.space.trainer.learnin_rate: unknown key; valid"),
        (["sweep.space.model.dropout='choice([])'"], "sweep.space.model.dropout: 'choice([])': choice needs a non-emp"),
        (["sweep.space.model.dropout='uniform(0.5, 0.2)'"], "sweep.space.model.dropout: 'uniform(0.5, 0.2)': low must"),
        (["sweep.space.model.dropout='normal(0, 1)'"], "'normal(0, 1)' is not a search expression: expected one of"),
        (["sweep.space.model.dropout='uniform(0.1)'"], "'uniform(0.1)': expected uniform(low, high)"),
        (["sweep.space.trainer.learning_rate='loguniform(0, 1)'"], "loguniform needs 0 < low"),
        (
            ["sweep.space.trainer.learning_rate='uniform(-1, 1)'"],
            "a trial would get trainer.learning_rate=-1: trainer.",
        ),
        (["sweep.scheduler.name=hyperband"], "sweep.scheduler.name='hyperband' is invalid: expected one of asha, medi"),
        (["sweep.search.algorithm=anneal"], "sweep.search.algorithm='anneal' is invalid: expected one of random, gr"),
        (["+sweep.scheduler.patience=3"], "sweep.scheduler.patience: unknown key; valid keys: grace_period, reduction"),
        (["sweep.metric=f1"], "sweep.metric='f1' is invalid: expected one of val_accuracy, val_loss, accuracy, loss"),
        (["sweep.scheduler.grace_period=40"], "sweep.scheduler.grace_period=40 exceeds trainer.epochs=30"),
        (["+sweep.space.storage.uri='choice([\"/tmp\"])'"], "sweep.space.storage.uri: only model, trainer, dataset"),
        (["sweep.search.algorithm=grid"], "sweep.space.trainer.learning_rate=loguniform(1e-4, 1e-2): a grid sweep ne"),
        (
            ["resources.num_workers=4", "sweep.space.trainer.batch_size='choice([64, 126])'"],
            "trainer.batch_size=126: trainer.batch_size=126 is not divisible by resources.num_workers=4",
        ),
    ],
)
def test_bad_sweeps_are_rejected_naming_the_key(overrides, message):
    with pytest.raises(DltrainError) as error:
        resolve(compose_config("sweep=asha", *overrides))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_grid_enumerates_every_combination():
    sweep = resolve(compose_config("sweep=grid", "sweep.num_samples=2")).sweep
    space = param_space(sweep)
    assert space == {
        "trainer.learning_rate": {"grid_search": [0.0003, 0.001, 0.003]},
        "model.dropout": {"grid_search": [0.2, 0.4]},
    }
    assert trial_count(sweep) == 2 * 3 * 2


@pytest.mark.parametrize(
    ("name", "settings", "kind"),
    [
        ("asha", ["sweep.scheduler.grace_period=2"], "AsyncHyperBandScheduler"),
        ("median", ["~sweep.scheduler.reduction_factor", "sweep.scheduler.grace_period=2",
                    "+sweep.scheduler.min_samples_required=3"], "MedianStoppingRule"),
        ("fifo", ["~sweep.scheduler.reduction_factor", "~sweep.scheduler.grace_period"], "FIFOScheduler"),
    ],
)  # fmt: skip
def test_each_scheduler_is_built_from_its_settings(name, settings, kind):
    sweep = resolve(compose_config("sweep=asha", f"sweep.scheduler.name={name}", *settings, "trainer.epochs=8"))
    built = scheduler(sweep.sweep, 8)
    assert kind in [cls.__name__ for cls in type(built).__mro__]
    assert getattr(built, "last_epoch", 8) == 8  # early-stopping schedulers spare every trial's last epoch


def _dltrain(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dltrain", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_a_model_value_that_cannot_build_fails_before_anything_runs(real_data, tmp_path):
    result = _dltrain(
        "sweep=asha", "sweep.space.model.dropout='uniform(0.2, 1.5)'", f"dataset.path={real_data}",
        f"storage.uri={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "dltrain: error: sweep.space.model.dropout: a trial would get model.dropout=1.5: model: dropout must be "
        "in [0, 1), got 1.5"
    )
    assert not any(tmp_path.iterdir())


def _trial_folders(storage: Path, sweep_id: str) -> list[Path]:
    return sorted(path for path in storage.iterdir() if path.name.startswith(f"{sweep_id}-"))


def _status(run_folder: Path) -> dict:
    return json.loads((run_folder / "status.json").read_text())


def _check_trials_table(storage: Path, sweep_id: str, keys: list[str]) -> list[dict]:
    """trials.parquet agrees with the trials' own run folders; returns its rows."""
    rows = pq.read_table(storage / sweep_id / "trials.parquet").to_pylist()
    folders = _trial_folders(storage, sweep_id)
    assert sorted(row["run_id"] for row in rows) == [folder.name for folder in folders]
    for row in rows:
        run = storage / row["run_id"]
        status = _status(run)
        history = pq.read_table(run / "metrics.parquet").to_pylist()
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert row["status"] == status["status"]
        assert row["epochs"] == len(history) and [h["epoch"] for h in history] == list(range(1, len(history) + 1))
        assert row["best_val_accuracy"] == max(h["val_accuracy"] for h in history)
        assert all(row[key] == flatten(config)[key] for key in keys)
        assert (row["status"] == "COMPLETED") == (run / "summary.json").is_file()
        # Made as every run is made: its provenance is the sweep's command, its own data's md5s and its sweep.
        trial_record, sweep_record = (json.loads((folder / "provenance.json").read_text()) for folder in
                                      (run, storage / sweep_id))  # fmt: skip
        assert trial_record["trial_of"] == sweep_id and trial_record["data_md5"]
        assert trial_record["command"] == sweep_record["command"]
    assert (storage / sweep_id / "plots" / "trials.png").read_bytes().startswith(b"\x89PNG")
    return rows


@pytest.mark.slow
def test_asha_sweep_stops_poor_trials_early_and_records_every_trial(real_data, tmp_path, mlflow_server):
    experiment = f"asha-{tmp_path.name}"
    result = _dltrain(
        "sweep=asha", "sweep.num_samples=4", "trainer.epochs=4", "sweep.scheduler.grace_period=1",
        "sweep.scheduler.reduction_factor=2", "sweep.space.trainer.batch_size='choice([32, 64])'",
        "+sweep.space.dataset.classes='choice([[0, 1, 2], [3, 4, 5, 6, 7]])'", f"dataset.path={real_data}",
        f"storage.uri={tmp_path}", f"tracking.mlflow_uri={mlflow_server.uri}", f"tracking.experiment={experiment}",
        *TINY,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_id = result.stdout.splitlines()[0].split()[2]
    keys = ["trainer.learning_rate", "trainer.batch_size", "model.dropout"]
    rows = _check_trials_table(tmp_path, sweep_id, keys)
    assert len(rows) == 4 and {row["trial_id"] for row in rows} == {row["run_id"][len(sweep_id) + 1 :] for row in rows}
    stopped = [row for row in rows if row["status"] == "STOPPED"]
    assert stopped and all(row["epochs"] < 4 for row in stopped)
    assert all(row["epochs"] == 4 and row["test_accuracy"] > 0.1 for row in rows if row["status"] == "COMPLETED")
    completed = [row for row in rows if row["status"] == "COMPLETED"]
    assert completed, rows  # ASHA lets the best trial finish: the check below is not vacuous
    for row in completed:  # each trial trained on its own classes, not on the driver's ten
        classes = yaml.safe_load((tmp_path / row["run_id"] / "config.yaml").read_text())["dataset"]["classes"]
        tested = json.loads((tmp_path / row["run_id"] / "summary.json").read_text())["test_accuracy_per_class"]
        assert list(tested) == [CLASS_NAMES[number] for number in classes], row
    for row in stopped:
        status = _status(tmp_path / row["run_id"])
        assert status["error"] == f"stopped early by the asha scheduler after epoch {row['epochs']}"

    summary = json.loads((tmp_path / sweep_id / "summary.json").read_text())
    best = max(rows, key=lambda row: row["best_val_accuracy"])
    assert summary["best"]["run_id"] == best["run_id"]
    assert summary["best"]["val_accuracy"] == best["best_val_accuracy"]
    assert (summary["trials"], summary["trial_epochs"], summary["budget_epochs"]) == (
        4, sum(row["epochs"] for row in rows), 16,
    )  # fmt: skip
    assert _status(tmp_path / sweep_id)["status"] == "COMPLETED"
    assert (tmp_path / sweep_id / "config.yaml").is_file() and (tmp_path / sweep_id / "logs" / "driver.log").is_file()
    assert "trial  " in result.stdout and "val_accuracy" in result.stdout  # the progress table
    assert result.stdout.splitlines()[-1].startswith(f"dltrain: best val_accuracy {best['best_val_accuracy']:.4f}: ")
    assert result.stdout.splitlines()[-1].endswith(f"-> run {best['run_id']}")
    assert not any(noise in result.stdout for noise in ("Traceback", "I0000", "oneDNN", "View detailed results"))
    _check_mirrored_to_mlflow(mlflow_server.uri, experiment, tmp_path, sweep_id, rows)


def _check_mirrored_to_mlflow(uri: str, experiment: str, storage: Path, sweep_id: str, rows: list[dict]) -> None:
    """MLflow has the sweep as a run, its trials as child runs, each ended as its run did, with every epoch once."""
    client, mirrored = MlflowClient(uri), mirrored_runs(uri, experiment)
    sweep = mirrored.pop(sweep_id)
    assert (sweep.data.tags["dltrain.kind"], sweep.data.tags["dltrain.status"], sweep.info.status) == (
        "sweep", "COMPLETED", "FINISHED")  # fmt: skip
    assert [item.path for item in client.list_artifacts(sweep.info.run_id, "plots")] == ["plots/trials.png"]
    assert set(mirrored) == {row["run_id"] for row in rows}
    for row in rows:
        trial = mirrored[row["run_id"]]
        assert trial.data.tags["mlflow.parentRunId"] == sweep.info.run_id and trial.data.tags["dltrain.kind"] == "trial"
        assert (trial.data.tags["dltrain.status"], trial.info.status) == (row["status"], MLFLOW_STATUS[row["status"]])
        config = flatten(yaml.safe_load((storage / row["run_id"] / "config.yaml").read_text()))
        assert set(trial.data.params) == set(config)
        assert trial.data.params["trainer.learning_rate"] == str(config["trainer.learning_rate"])
        history = client.get_metric_history(trial.info.run_id, "val_accuracy")
        assert [metric.step for metric in history] == list(range(1, row["epochs"] + 1))


@pytest.mark.slow
def test_grid_sweep_interrupted_on_the_driver_resumes_to_exactly_the_grid(real_data, tmp_path, mlflow_server):
    experiment = f"grid-{tmp_path.name}"
    args = [
        "sweep=grid", "sweep.space.trainer.learning_rate='choice([0.001, 0.003])'",
        "sweep.space.model.dropout='choice([0.3])'", "trainer.epochs=2", f"dataset.path={real_data}",
        f"storage.uri={tmp_path}", f"tracking.mlflow_uri={mlflow_server.uri}", f"tracking.experiment={experiment}",
        *TINY,
    ]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "dltrain", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        sweep_id = process.stdout.readline().split()[2]
        deadline = time.monotonic() + 600
        # Wait until Tune has saved its state and a trial has checkpointed its last epoch, then kill everything, as
        # a reboot: resumed, that trial has no epoch left to train, yet Tune must still hear its metric.
        while not (
            list((tmp_path / sweep_id / "tune").glob("experiment_state-*.json"))
            and any((run / "checkpoints" / "epoch-0002").is_dir() for run in _trial_folders(tmp_path, sweep_id))
        ):
            assert time.monotonic() < deadline and process.poll() is None, "the sweep made no progress"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert _status(tmp_path / sweep_id)["status"] == "RUNNING"
    interrupted = [
        run.name
        for run in _trial_folders(tmp_path, sweep_id)
        if (run / "status.json").is_file() and _status(run)["status"] == "RUNNING"
    ]

    result = _dltrain(f"resume={sweep_id}", f"storage.uri={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming sweep {sweep_id} (RUNNING)" in result.stdout
    rows = _check_trials_table(tmp_path, sweep_id, ["trainer.learning_rate", "model.dropout"])
    grid = sorted((row["trainer.learning_rate"], row["model.dropout"]) for row in rows)
    assert grid == [(0.001, 0.3), (0.003, 0.3)]
    assert all(row["status"] == "COMPLETED" and row["epochs"] == 2 for row in rows)
    # The interrupted trials continued their own runs.
    assert interrupted and all("resumed" in _status(tmp_path / run_id) for run_id in interrupted)
    summary = json.loads((tmp_path / sweep_id / "summary.json").read_text())
    assert summary["completed"] == 2 and summary["trial_epochs"] == summary["budget_epochs"] == 4
    # Resumed, the sweep and its trials went on in their own MLflow runs, each epoch sent once.
    _check_mirrored_to_mlflow(mlflow_server.uri, experiment, tmp_path, sweep_id, rows)


@pytest.mark.slow
def test_bayes_sweep_of_two_worker_trials_writes_its_folder_and_trials_to_s3_through_an_outage(
    s3_session_server, s3_outages, real_data, tmp_path
):
    server = s3_session_server
    bucket = create_bucket(server)
    # S3 goes away for 20 s as Tune first stores its experiment state, while trials train and write their own runs
    # (outages up to 45 s: test_s3).
    outage = s3_outages.arm(r"/tune/experiment_state", 20)
    result = _dltrain(
        "sweep=bayes", "sweep.num_samples=2", "trainer.epochs=2", "resources.num_workers=2", "storage=s3",
        f"storage.uri=s3://{bucket}/runs", f"storage.endpoint_url={s3_outages.endpoint_url}",
        f"dataset.path={real_data}", *TINY, env={**os.environ, **server.env()},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert outage.over.is_set()
    sweep_id = result.stdout.splitlines()[0].split()[2]
    assert "each 2 worker(s) x {'CPU': 0.49}" in result.stdout  # 2 trials at once share the 2 CPUs
    client = server.client()
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=bucket, Prefix="runs/")["Contents"]]
    for name in ("config.yaml", "status.json", "trials.parquet", "summary.json", "plots/trials.png"):
        assert f"runs/{sweep_id}/{name}" in keys
    trial_runs = {key.split("/")[1] for key in keys if key.split("/")[1].startswith(f"{sweep_id}-")}
    assert len(trial_runs) == 2
    summary = json.loads(client.get_object(Bucket=bucket, Key=f"runs/{sweep_id}/summary.json")["Body"].read())
    assert summary["trials"] == 2 and summary["best"]["run_id"] in trial_runs
    for run_id in trial_runs:  # every trial trained on two workers, each keeping its own log
        logs = [key.split("/")[-1] for key in keys if key.startswith(f"runs/{run_id}/logs/worker-")]
        assert {name.split("-pid")[0] for name in logs} == {"worker-0", "worker-1"}
    assert set(summary["best"]["values"]) == {
        "trainer.learning_rate", "trainer.batch_size", "model.dropout", "model.dense_units",
    }  # fmt: skip
    secret = server.env()["AWS_SECRET_ACCESS_KEY"]
    assert not any(secret.encode() in client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys)
