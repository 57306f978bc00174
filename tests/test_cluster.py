"""dltrain on a real multi-node Ray cluster: a head and two worker nodes in network namespaces on this machine.

Each worker node declares 1 CPU and 2 logical GPUs (`ray start --num-gpus=2`), so resources=large places 2 GPU
workers on each; TensorFlow, finding no GPU, trains on the CPU. The run folders live on a real S3 server on the
test bridge's host address, and every node has its credentials, as an instance role gives them on AWS.
"""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dltrain.job import StorageConfig
from dltrain.runs import RunStore
from dltrain.storage import open_storage

from helpers.netns_cluster import RAY, namespace_cluster
from helpers.s3server import create_bucket, running_s3_server

pytestmark = pytest.mark.slow

WORKER_NODE = ["--num-cpus=1", "--num-gpus=2"]
RUN_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    private = tmp_path_factory.mktemp("private")  # on the host and the head, but empty on the last worker node
    with namespace_cluster(workers=2) as built, running_s3_server(built.host_address) as s3:
        # Every node has the S3 credentials and the tests' callbacks (as a machine has its packages).
        built.start(WORKER_NODE, private, {**s3.env(), "PYTHONPATH": str(Path(__file__).parent)})
        built.s3, built.bucket, built.private = s3, create_bucket(s3), private
        yield built


@pytest.fixture(scope="module")
def helpers_folder(tmp_path_factory) -> Path:
    """A working directory for submitted jobs: the tests' callbacks, which Ray puts on the workers' path."""
    folder = tmp_path_factory.mktemp("working-dir")
    shutil.copytree(Path(__file__).parent / "helpers", folder / "helpers", ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def _recipe(cluster, real_data: Path, dumps: Path, *overrides: str) -> list[str]:
    """4 one-GPU workers on the cluster, 4 short epochs of the real data into S3; each worker dumps its weights
    and what it saw to `dumps` (a folder every node shares here). The global batch, 96, divides by 2, 3 and 4
    workers. Plain SGD and no dropout, as in the engine's 1-vs-2-worker test."""
    return [
        "resources=large", f"dataset.path={real_data}", "dataset.limit=1280", "trainer.batch_size=96",
        "trainer.epochs=4", "model.dropout=0.0", "trainer.optimizer=sgd", "trainer.learning_rate=0.05",
        "storage=s3", f"storage.uri=s3://{cluster.bucket}/runs", f"storage.endpoint_url={cluster.s3.endpoint_url}",
        f"+trainer.callbacks.dump={{_target_: helpers.callbacks.DumpWorkerState, folder: '{dumps}'}}", *overrides,
    ]  # fmt: skip


def _driver(cluster, *args: str) -> subprocess.Popen:
    """`python -m dltrain *args` on the head, against the cluster's address (ray.address=)."""
    command = cluster.in_head(sys.executable, "-m", "dltrain", f"ray.address={cluster.gcs_address}", *args)
    return subprocess.Popen(command, env=cluster.node_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _job_cli(cluster, *args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    """`ray job ...` against the head's job server, from the host (a machine on the cluster's network)."""
    command = [RAY, "job", *args[:1], "--address", cluster.dashboard_url, *args[1:]]
    return subprocess.run(command, env=cluster.env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def store(cluster) -> RunStore:
    """The cluster's run folders, read from here with its S3 credentials (in this module's environment)."""
    storage = StorageConfig(uri=f"s3://{cluster.bucket}/runs", endpoint_url=cluster.s3.endpoint_url)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in cluster.s3.env().items():
            patch.setenv(name, value)
        yield RunStore(open_storage(storage))


def _run_id(console: str) -> str:
    return next(line.split()[2] for line in console.splitlines() if line.startswith("dltrain: run "))


def _wait_for(path: Path, process: subprocess.Popen | None = None, timeout: float = RUN_TIMEOUT_S) -> None:
    """Return once `path` exists (a worker wrote it); fail if `process` ends first or after `timeout`."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the run ended before {path.name} was written:\n{process.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} was not written within {timeout} s")
        time.sleep(0.2)


def _weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]


def test_a_local_folder_that_not_every_node_has_is_rejected_naming_the_node(cluster, real_data):
    lacking = cluster.workers[-1].address
    data, runs = cluster.private / "data", cluster.private / "runs"
    shutil.copytree(real_data, data)
    driver = _driver(cluster, "resources=large", f"dataset.path={data}", f"storage.uri={runs}", "trainer.epochs=1")
    _, stderr = driver.communicate(timeout=RUN_TIMEOUT_S)
    assert driver.returncode == 2, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"dltrain: error: dataset.path={data} is not on every node (missing on {lacking}); storage.uri={runs} is "
        f"not on every node (missing on {lacking}): a Ray cluster of several nodes needs s3:// paths, or folders "
        "that every node shares"
    )
    assert not list(runs.glob(".dltrain-node-check-*")), "the check's marker file is left behind"


@pytest.fixture(scope="module")
def submitted_run(cluster, real_data, helpers_folder, tmp_path_factory):
    """The recipe submitted with `ray job submit`, waited for to the end; (job output, run id, dumps folder)."""
    dumps = tmp_path_factory.mktemp("dumps-submitted")
    submit = _job_cli(
        cluster, "submit", "--submission-id", "dltrain-large", "--working-dir", str(helpers_folder), "--",
        sys.executable, "-m", "dltrain", *_recipe(cluster, real_data, dumps),
    )  # fmt: skip
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    return submit.stdout, _run_id(submit.stdout), dumps


def test_a_submitted_large_run_completes_with_ranks_on_both_worker_nodes(cluster, store, submitted_run):
    output, run_id, dumps = submitted_run
    run = store.get(run_id)
    assert run.status()["status"] == "COMPLETED"
    assert [row["epoch"] for row in run.metrics()] == [1, 2, 3, 4]
    seen = [json.loads((dumps / f"worker-{rank}.json").read_text()) for rank in range(4)]
    assert {worker["node_ip"] for worker in seen} == {node.address for node in cluster.workers}
    assert sorted(worker["cuda_visible_devices"] for worker in seen) == ["0", "0", "1", "1"]  # 2 GPUs a node
    logs = _job_cli(cluster, "logs", "dltrain-large")
    assert "\nepoch 4/4  loss" in logs.stdout and f"dltrain: run {run_id} COMPLETED" in logs.stdout
    assert "\nepoch 1/4  loss" in output


def test_ray_job_stop_ends_a_submitted_run_stopped_with_its_checkpoints(
    cluster, store, real_data, helpers_folder, tmp_path
):
    recipe = _recipe(cluster, real_data, tmp_path, "trainer.epochs=50")
    submit = _job_cli(cluster, "submit", "--no-wait", "--submission-id", "dltrain-stop", "--working-dir",
                      str(helpers_folder), "--", sys.executable, "-m", "dltrain", *recipe)  # fmt: skip
    assert submit.returncode == 0, submit.stderr
    _wait_for(tmp_path / "weights-0-epoch1.npz")
    stop = _job_cli(cluster, "stop", "dltrain-stop")
    assert stop.returncode == 0, stop.stderr
    run_id = _run_id(_job_cli(cluster, "logs", "dltrain-stop").stdout)
    run = store.get(run_id)
    assert run.status()["status"] == "STOPPED"
    assert run.status()["error"] == "stopped by signal SIGTERM"
    assert run.storage.list_folders(f"{run.path}/checkpoints"), "the run's checkpoints are gone"
    assert "Job 'dltrain-stop' was stopped" in _job_cli(cluster, "status", "dltrain-stop").stdout


def test_a_lost_node_without_elastic_fails_in_one_line_after_the_wait(cluster, store, real_data, tmp_path):
    """(That resume= then continues a run is tested on one machine, where it works the same: test_cli, test_s3.)"""
    lost = cluster.workers[-1]
    driver = _driver(cluster, *_recipe(cluster, real_data, tmp_path, "ray.wait_for_workers_s=15"))
    _wait_for(tmp_path / "weights-0-epoch1.npz", driver)
    lost.kill()
    try:
        stdout, stderr = driver.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        cluster.restart(lost)
    assert driver.returncode == 2, stderr
    run_id = _run_id(stdout)
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"dltrain: error: run {run_id} FAILED: lost node {lost.address}; 4 workers x "), last
    assert "could not be placed for 15 s (ray.wait_for_workers_s); the cluster has 1 CPU, 2 GPU left" in last
    assert f"resume={run_id} continues it once the capacity is back" in last
    assert store.get(run_id).status()["status"] == "FAILED"


def test_an_elastic_run_goes_on_without_a_lost_node_and_takes_the_same_steps(
    cluster, store, real_data, submitted_run, tmp_path
):
    """The run loses a node at epoch 2 of 4 and ends on 2 workers; the uninterrupted 4-worker run (the
    submitted one: same recipe and global batch) is the reference, within the engine test's bounds. The
    module's last test: the node stays lost."""
    lost = cluster.workers[-1]
    # Ray marks the node dead after missed health checks: the first attempt to restart (a quarter of the wait)
    # may still count it, a later one takes the 2 workers left.
    driver = _driver(cluster, *_recipe(cluster, real_data, tmp_path, "resources.min_workers=2",
                                       "ray.wait_for_workers_s=120"))  # fmt: skip
    _wait_for(tmp_path / "weights-0-epoch1.npz", driver)
    lost.kill()
    stdout, stderr = driver.communicate(timeout=RUN_TIMEOUT_S)
    assert driver.returncode == 0, stderr[-3000:]
    assert "2-4 worker(s)" in stdout
    ended_on = json.loads((tmp_path / "worker-0.json").read_text())
    assert len(ended_on["tf_workers"]) == 2, ended_on  # the last epochs ran on the 2 workers left

    _, reference_id, reference_dumps = submitted_run
    elastic, reference = store.get(_run_id(stdout)).metrics(), store.get(reference_id).metrics()
    assert [row["epoch"] for row in elastic] == [1, 2, 3, 4]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert elastic[0][key] == pytest.approx(reference[0][key], rel=1e-5)
        assert elastic[-1][key] == pytest.approx(reference[-1][key], rel=5e-2)
    initial = _weights(reference_dumps / "initial-weights-0.npz")
    for start, full, resized in zip(
        initial, _weights(reference_dumps / "weights-0.npz"), _weights(tmp_path / "weights-0.npz"), strict=True
    ):
        assert np.linalg.norm(full - resized) <= 0.2 * np.linalg.norm(full - start)
