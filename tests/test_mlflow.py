"""Runs and registrations mirrored to a real MLflow tracking server (helpers/mlflow_server.py), read back with
MLflow's own client; an MLflow outage that outlasts the client's retries never fails a run. A sweep's trials as
child runs are checked by test_sweep.py's ASHA sweep."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow import MlflowClient

from dltrain.search_space import flatten

from helpers.mlflow_server import mirrored_runs
from helpers.outage import OutageProxy
from helpers.ports import free_port

DLTRAIN = str(Path(sys.executable).parent / "dltrain")
PASSWORD, TOKEN = "pw-5c81d0", "tok-93ef02"  # a RemoteMonitor's: in its URL, and in one of its headers
TINY = ["dataset.limit=1280", "trainer.batch_size=64", "trainer.progress=epochs"]


def _dltrain(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([DLTRAIN, *args], capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_a_run_is_mirrored_as_it_goes_and_its_registered_versions_and_aliases_too(real_data, tmp_path, mlflow_server):
    storage, experiment, closed = tmp_path / "runs", f"mirrored-{tmp_path.name}", free_port()
    proxy = OutageProxy(("127.0.0.1", mlflow_server.port))
    # The first log-batch (the params) is cut off, and MLflow is unreachable for a second: the client retries.
    outage = proxy.arm(r"/api/2\.0/mlflow/runs/log-batch", 1)
    remote = (f'+trainer.callbacks.remote={{_target_: keras.callbacks.RemoteMonitor, root: "http://alice:{PASSWORD}@'
              f'127.0.0.1:{closed}", headers: {{X-Api-Token: {TOKEN}}}}}')  # fmt: skip
    try:
        trained = _dltrain("train", "trainer.epochs=2", *TINY, f"dataset.path={real_data}", f"storage.uri={storage}",
                           f"tracking.mlflow_uri={proxy.endpoint_url}", f"tracking.experiment={experiment}",
                           remote)  # fmt: skip
        assert trained.returncode == 0, trained.stderr[-3000:]
        assert "MLflow" not in trained.stdout + trained.stderr
        assert outage.began is not None and outage.ended is not None
        run_id = trained.stdout.split()[2]
        folder = storage / run_id

        (mirrored,) = mirrored_runs(mlflow_server.uri, experiment).values()
        client, mlflow_id = MlflowClient(mlflow_server.uri), mirrored.info.run_id
        assert mirrored.info.status == "FINISHED" and mirrored.info.run_name == run_id
        provenance = json.loads((folder / "provenance.json").read_text())
        assert {key: mirrored.data.tags.get(key) for key in ("dltrain.run_id", "dltrain.kind", "dltrain.status",
                "dltrain.framework", "dltrain.git_commit")} == {"dltrain.run_id": run_id, "dltrain.kind": "run",
                "dltrain.status": "COMPLETED", "dltrain.framework": "tensorflow",
                "dltrain.git_commit": provenance["git"]["commit"]}  # fmt: skip

        # Params: config.yaml flattened, redacted as it is: the params batch cut off on its way came again.
        params, saved = mirrored.data.params, yaml.safe_load((folder / "config.yaml").read_text())
        assert set(params) == set(flatten(saved))
        assert (params["trainer.epochs"], params["dataset.limit"], params["tracking.experiment"]) == (
            "2", "1280", experiment)  # fmt: skip
        assert params["trainer.callbacks.remote.headers.X-Api-Token"] == "***"
        assert params["trainer.callbacks.remote.root"] == f"http://***@127.0.0.1:{closed}"
        assert not [value for value in params.values() if PASSWORD in value or TOKEN in value]

        # Metrics: each epoch's row at step = its epoch, then the test metrics.
        rows = pq.read_table(folder / "metrics.parquet").to_pylist()
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "seconds"):
            history = client.get_metric_history(mlflow_id, key)
            assert [(metric.step, metric.value) for metric in history] == [(row["epoch"], row[key]) for row in rows]
        summary = json.loads((folder / "summary.json").read_text())
        assert mirrored.data.metrics["test_accuracy"] == summary["test_accuracy"]

        # Artifacts: the plots, provenance and model, the same bytes.
        listed = {item.path for item in client.list_artifacts(mlflow_id)} | {
            item.path for name in ("plots", "model") for item in client.list_artifacts(mlflow_id, name)
        }
        assert listed >= {"provenance.json", "plots/curves.png", "plots/confusion_matrix.png", "model/model.keras",
                          "model/test_metrics.json", "model/confusion_matrix.json"}  # fmt: skip
        downloaded = client.download_artifacts(mlflow_id, "model/model.keras", str(tmp_path))
        assert Path(downloaded).read_bytes() == (folder / "model" / "model.keras").read_bytes()

        # The registry: versions and aliases in MLflow's too, each version from the MLflow run's model/.
        first = _dltrain("models", "register", run_id, "--name", "fashion-mirrored", "--alias", "production",
                         "--tag", "team=vision", "--storage", str(storage))  # fmt: skip
        assert first.returncode == 0, first.stderr
        assert "MLflow: fashion-mirrored version 1 @production (from fashion-mirrored:1)" in first.stdout
        second = _dltrain("models", "register", run_id, "--name", "fashion-mirrored", "--storage", str(storage))
        assert second.returncode == 0, second.stderr
        moved = _dltrain("models", "alias", "fashion-mirrored", "2", "production", "--storage", str(storage))
        assert moved.returncode == 0, moved.stderr
        assert "MLflow: fashion-mirrored@production -> version 2 (from fashion-mirrored:2)" in moved.stdout
    finally:
        proxy.close()
    version = client.get_model_version_by_alias("fashion-mirrored", "production")
    assert (version.version, version.run_id, version.tags) == (
        "2", mlflow_id, {"dltrain.version": "2"})  # fmt: skip
    assert version.source == f"{mirrored.info.artifact_uri}/model"
    assert client.get_model_version("fashion-mirrored", "1").tags == {"dltrain.version": "1", "team": "vision"}


@pytest.mark.slow
def test_an_mlflow_server_that_does_not_answer_never_fails_a_run_or_a_registration(real_data, tmp_path):
    storage, down = tmp_path / "runs", f"http://127.0.0.1:{free_port()}"
    # MLflow's client retries as its users set it; 2 quick retries here, not its 7 over about 4 minutes.
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    trained = _dltrain("train", "trainer.epochs=1", *TINY, f"dataset.path={real_data}", f"storage.uri={storage}",
                       f"tracking.mlflow_uri={down}", env=env)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_id = trained.stdout.split()[2]
    assert json.loads((storage / run_id / "status.json").read_text())["status"] == "COMPLETED"
    warned = [line for line in trained.stderr.splitlines() if "MLflow" in line]
    assert len(warned) == 1 and warned[0].startswith(f"dltrain: warning: MLflow at {down} failed: "), warned
    assert warned[0].endswith(f"; run {run_id} is not mirrored from here on")
    assert "Connection refused" in warned[0]

    registered = _dltrain("models", "register", run_id, "--name", "unmirrored", "--storage", str(storage), env=env)
    assert registered.returncode == 0, registered.stderr
    assert registered.stdout.startswith(f"registered unmirrored:1 from run {run_id} ")
    (line,) = registered.stderr.splitlines()
    assert line.startswith(f"dltrain: warning: MLflow at {down} failed: ")
    assert line.endswith("; unmirrored:1 is registered in dltrain only")
