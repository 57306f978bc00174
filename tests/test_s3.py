"""S3 storage against a real S3 server (SeaweedFS on 127.0.0.1): whole runs, S3 data, errors, outages, secrets."""

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import keras
import pyarrow.parquet as pq
import pytest

from dltrain.data import fashion_mnist
from dltrain.job import StorageConfig
from dltrain.storage import check_bucket, open_storage

from helpers.runs import TWO_WORKER_RECIPE
from helpers.s3server import S3Server, create_bucket

pytestmark = pytest.mark.slow
SMALL = ["dataset.limit=1280", "trainer.batch_size=64"]


def _env(server: S3Server, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, **server.env(), "DLTRAIN_CACHE": str(tmp_path / "cache")}


def _storage(server: S3Server, bucket: str) -> list[str]:
    return ["storage=s3", f"storage.uri=s3://{bucket}/runs", f"storage.endpoint_url={server.endpoint_url}"]


def _dltrain(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dltrain", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def _objects(server: S3Server, bucket: str, prefix: str = "") -> dict[str, bytes]:
    client = server.client()
    keys = [
        item["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
    ]
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def _run_ids(objects: dict[str, bytes]) -> set[str]:
    return {key.split("/")[1] for key in objects if re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", key.split("/")[1])}


def test_two_worker_run_keeps_its_whole_folder_in_s3_and_reads_s3_data(
    s3_session_server, real_data, tmp_path, two_worker_run
):
    server = s3_session_server
    bucket = create_bucket(server)
    for name, _ in fashion_mnist.FILES.values():
        server.client().upload_file(str(real_data / name), bucket, f"data/fashion-mnist/{name}")
    result = _dltrain(
        *_storage(server, bucket), f"dataset.path=s3://{bucket}/data/fashion-mnist", *TWO_WORKER_RECIPE,
        env=_env(server, tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"-> s3://{bucket}/runs/" in result.stdout.splitlines()[0]
    assert sorted(
        p.name for p in (tmp_path / "cache" / "s3" / bucket / "data" / "fashion-mnist").glob("*.gz")
    ) == sorted(name for name, _ in fashion_mnist.FILES.values())  # the data came from S3 into the local cache

    objects = _objects(server, bucket, "runs/")
    (run_id,) = _run_ids(objects)
    names = {key.removeprefix(f"runs/{run_id}/") for key in objects}
    assert {
        "config.yaml",
        "status.json",
        "metrics.parquet",
        "summary.json",
        "model/model.keras",
        "logs/driver.log",
    } <= names
    assert {"checkpoints/epoch-0001/model.keras", "checkpoints/epoch-0002/state.json"} <= names
    assert any(name.startswith("tensorboard/train/events.out.tfevents") for name in names)
    assert {name.split("-pid")[0] for name in names if name.startswith("logs/worker-")} == {
        "logs/worker-0",
        "logs/worker-1",
    }
    assert not any(name.endswith(".partial") for name in names)
    summary = json.loads(objects[f"runs/{run_id}/summary.json"])
    assert (summary["status"], summary["epochs"], summary["num_workers"]) == ("COMPLETED", 2, 2)
    # Deterministic 2 workers: the same recipe trained locally from local files (two_worker_run) took the same
    # steps, to the last bit of every epoch's loss and accuracy.
    keys = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    (local,) = [path for path in two_worker_run.storage.iterdir() if path.is_dir()]
    history = pq.read_table(io.BytesIO(objects[f"runs/{run_id}/metrics.parquet"])).select(keys)
    assert history.to_pylist() == pq.read_table(local / "metrics.parquet").select(keys).to_pylist()

    model_file = tmp_path / "model.keras"
    model_file.write_bytes(objects[f"runs/{run_id}/model/model.keras"])
    assert keras.models.load_model(model_file).output_shape == (None, 10)

    secret = server.secret_key.encode()
    assert not [key for key, body in objects.items() if secret in body]
    assert server.secret_key not in result.stdout + result.stderr


def test_s3_mistakes_fail_in_seconds_in_one_line(s3_session_server, s3_outages, tmp_path):
    """Each fails at the storage check, asking S3 once (counted at the proxy in front of it), or, with the endpoint
    down, before it is back: none is ridden out as an outage."""
    server = s3_session_server
    bucket = create_bucket(server)
    env = _env(server, tmp_path)
    wrong_key = {**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    proxied = ["storage=s3", f"storage.endpoint_url={s3_outages.endpoint_url}", "storage.retry_seconds=90"]
    cases = [
        ([*proxied, "storage.uri=s3://no-such-bucket/runs"], env, "bucket 'no-such-bucket' does not exist at",
         ["HEAD /no-such-bucket"]),
        ([*proxied, f"storage.uri=s3://{bucket}/runs"], wrong_key, f"rejected the credentials for bucket '{bucket}'",
         [f"HEAD /{bucket}"]),
        ([*proxied, f"storage.uri=s3://{bucket}/runs"], env, "cannot reach the S3 endpoint", []),  # down: below
        (["storage=s3", "storage.uri=s3://Bad_Bucket/x"], env, "is not an S3 URI of the form s3://bucket/prefix", []),
    ]  # fmt: skip
    for args, case_env, message, requests in cases:
        asked = len(s3_outages.requests)
        outage = s3_outages.down_now(90) if message.startswith("cannot reach") else None
        result = _dltrain(*args, env=case_env, timeout=120)
        error = result.stderr.strip()
        assert result.returncode == 2, error
        assert error.startswith("dltrain: error: storage: ") and message in error and "\n" not in error
        assert s3_outages.requests[asked:] == requests
        if outage is not None:  # riding the outage out (storage.retry_seconds is its length) would have reached S3
            assert not outage.over.is_set()
            s3_outages.end(outage)
    assert "storage.create_bucket=true" in _dltrain(*cases[0][0], env=env).stderr
    assert not _objects(server, bucket)  # nothing was written for the failed runs


def _check_completed(server: S3Server, bucket: str, run_id: str, epochs: int, tmp_path: Path) -> dict:
    """The run is COMPLETED with one history row per epoch, and every stored .keras loads; returns its status."""
    objects = _objects(server, bucket, f"runs/{run_id}/")
    status = json.loads(objects[f"runs/{run_id}/status.json"])
    assert status["status"] == "COMPLETED", status
    history = pq.read_table(io.BytesIO(objects[f"runs/{run_id}/metrics.parquet"])).to_pylist()
    assert [row["epoch"] for row in history] == list(range(1, epochs + 1))
    assert json.loads(objects[f"runs/{run_id}/summary.json"])["epochs"] == epochs
    stored = [key for key in objects if key.endswith(".keras")]
    assert f"runs/{run_id}/model/model.keras" in stored
    for key in stored:
        path = tmp_path / key.replace("/", "_")
        path.write_bytes(objects[key])
        keras.models.load_model(path)  # every stored checkpoint and the final model are whole
    return status


def test_a_stopped_s3_server_mid_epoch_is_ridden_out(s3_server, s3_bucket, real_data, tmp_path):
    server, env = s3_server, _env(s3_server, tmp_path)
    args = [*_storage(server, s3_bucket), f"dataset.path={real_data}", "trainer.epochs=6", *SMALL]
    process = subprocess.Popen(
        [sys.executable, "-m", "dltrain", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        run_id = process.stdout.readline().split()[2]
        for line in process.stdout:
            if line.startswith("epoch 2/6  loss"):  # the epoch line, not a progress line
                break
        server.stop()  # the real server, mid-epoch 3; its restart takes a few seconds more
        time.sleep(8)  # the outage itself
        server.start()
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-3000:]
    status = _check_completed(server, s3_bucket, run_id, 6, tmp_path)
    assert status["heartbeat"] >= status["started"]


def test_outages_up_to_45_s_are_ridden_out_wherever_they_hit(s3_session_server, s3_outages, real_data, tmp_path):
    server, proxy = s3_session_server, s3_outages
    bucket = create_bucket(server)
    outages = [
        proxy.arm(r"/checkpoints/epoch-0002/model\.keras", 8),  # a worker's checkpoint upload
        proxy.arm(r"/checkpoint_manager_snapshot\.json", 45),  # Ray Train's controller, right after it
        proxy.arm(r"/model/model\.keras", 8),  # the final model's upload
    ]
    storage = ["storage=s3", f"storage.uri=s3://{bucket}/runs", f"storage.endpoint_url={proxy.endpoint_url}"]
    ray_train = "resources.local_mode=false"  # a Ray Train worker and controller (the other outage tests: in-driver)
    result = _dltrain(*storage, ray_train, f"dataset.path={real_data}", "trainer.epochs=4", *SMALL,
                      env=_env(server, tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(outage.over.is_set() for outage in outages)
    run_id = result.stdout.split()[2]
    _check_completed(server, bucket, run_id, 4, tmp_path)
    epoch_lines = [line.split()[1] for line in result.stdout.splitlines() if re.match(r"epoch \S+  loss", line)]
    assert epoch_lines == ["1/4", "2/4", "3/4", "4/4"]


def test_a_longer_outage_fails_in_one_line_keeps_the_status_and_resume_completes(
    s3_session_server, s3_outages, real_data, tmp_path
):
    server, proxy, env = s3_session_server, s3_outages, _env(s3_session_server, tmp_path)
    bucket = create_bucket(server)
    storage = ["storage=s3", f"storage.uri=s3://{bucket}/runs", f"storage.endpoint_url={proxy.endpoint_url}"]
    outage = proxy.arm(r"/checkpoints/epoch-0002/model\.keras", None)  # down until the driver has exited
    failed = _dltrain(*storage, "storage.retry_seconds=5", f"dataset.path={real_data}", "trainer.epochs=4", *SMALL,
                      env=env)  # fmt: skip
    proxy.end(outage)
    run_id = failed.stdout.split()[2]
    assert failed.returncode == 2, failed.stderr[-3000:]
    lines = failed.stderr.strip().splitlines()
    assert all(line.startswith("dltrain: ") for line in lines), failed.stderr[-3000:]  # no traceback
    cause = f"S3 at {proxy.endpoint_url}: could not connect for 5 s (storage.retry_seconds) while "
    assert lines[0].startswith(f"dltrain: run {run_id} FAILED: {cause}")  # at once, before the status write waits
    assert lines[-1].startswith(f"dltrain: error: run {run_id} FAILED: {cause}")
    (kept,) = (tmp_path / "cache" / "pending").glob(f"*/{run_id}.json")
    assert any(line.startswith(f"dltrain: warning: run {run_id} is FAILED but {cause}") and str(kept) in line
               for line in lines)  # fmt: skip
    # Its driver log, which the storage did not take either, stays on this machine, named (and is removed here).
    (stays,) = [line for line in lines if line.startswith("dltrain: the driver log stays in ")]
    driver_log = Path(stays.removeprefix("dltrain: the driver log stays in ").split(": ", 1)[0])
    assert f"run {run_id} failed" in driver_log.read_text()
    driver_log.unlink()

    # The next command on this storage, whatever it is, stores the kept status.
    other = _dltrain(*storage, "resume=20200101-000000-000000", env=env, timeout=120)
    assert other.returncode == 2 and "no run '20200101-000000-000000'" in other.stderr
    status = json.loads(server.client().get_object(Bucket=bucket, Key=f"runs/{run_id}/status.json")["Body"].read())
    assert (status["status"], status["error"]) == ("FAILED", lines[-1].split(" FAILED: ")[1].split(" (logs: ")[0])
    assert not kept.exists()

    resumed = _dltrain(*storage, f"resume={run_id}", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed" in _check_completed(server, bucket, run_id, 4, tmp_path)


def test_create_bucket_makes_a_missing_bucket(s3_session_server, monkeypatch):
    server = s3_session_server
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    name = f"made-{os.getpid()}-{int(time.time())}"
    with pytest.raises(ValueError, match="does not exist"):
        check_bucket(name, server.endpoint_url, None, create=False)
    check_bucket(name, server.endpoint_url, None, create=True)
    check_bucket(name, server.endpoint_url, None, create=False)  # now it exists
    assert name in {bucket["Name"] for bucket in server.client().list_buckets()["Buckets"]}


def test_credentials_changed_in_the_environment_are_the_ones_the_next_request_uses(s3_session_server, monkeypatch):
    """A process (a notebook, a test session) may name other credentials later: each request uses the current ones."""
    server = s3_session_server
    bucket = create_bucket(server)
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(ValueError, match="rejected the credentials"):
        check_bucket(bucket, server.endpoint_url, None, create=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    check_bucket(bucket, server.endpoint_url, None, create=False)
    storage = open_storage(StorageConfig(uri=f"s3://{bucket}/runs", endpoint_url=server.endpoint_url))
    storage.update_json(f"{storage.root}/record.json", lambda record: {"version": 1})
    assert storage.read_json(f"{storage.root}/record.json") == {"version": 1}


def test_upload_copies_a_nested_folder_and_replaces_changed_files(s3_session_server, monkeypatch, tmp_path):
    """The per-epoch TensorBoard upload: train/ and validation/ subfolders, files that grow every epoch."""
    server = s3_session_server
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    bucket = create_bucket(server)
    storage = open_storage(StorageConfig(uri=f"s3://{bucket}/runs", endpoint_url=server.endpoint_url))
    for epoch in (1, 2):
        for part in ("train", "validation"):
            (tmp_path / "tensorboard" / part).mkdir(parents=True, exist_ok=True)
            (tmp_path / "tensorboard" / part / "events").write_text(f"{part} up to epoch {epoch}")
        storage.upload(tmp_path / "tensorboard", storage.join("run", "tensorboard"))
    files = {key: content for key, content in _objects(server, bucket).items() if not key.endswith("/")}
    assert files == {  # folder markers aside
        "runs/run/tensorboard/train/events": b"train up to epoch 2",
        "runs/run/tensorboard/validation/events": b"validation up to epoch 2",
    }
