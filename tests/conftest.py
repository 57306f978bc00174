"""Shared fixtures: the real Fashion-MNIST folder, one embedded Ray for engine tests, one real completed run for
the tests of the commands that read runs, one real 2-worker run, S3 (helpers/s3server.py, helpers/outage.py) and
an MLflow server (helpers/mlflow_server.py). What tests import lives in the helpers package."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.mlflow_server import mlflow_server  # noqa: F401 - fixtures for every test module
from helpers.outage import s3_outages  # noqa: F401
from helpers.runs import TWO_WORKER_RECIPE, temporary_files
from helpers.s3server import s3_bucket, s3_server, s3_session_server  # noqa: F401

TESTS_DIR = Path(__file__).parent
DATA_DIR = (TESTS_DIR.parent.parent / "shared" / "data" / "fashion-mnist").resolve()


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real Fashion-MNIST files from ../shared/data; tests that need them skip where that folder is absent."""
    if not all((DATA_DIR / name).is_file() for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")):
        pytest.skip(f"real Fashion-MNIST data not found at {DATA_DIR}")
    return DATA_DIR


@pytest.fixture(scope="session")
def worker_env() -> dict[str, str]:
    """Environment for processes that must import the tests' helper callbacks (Ray workers inherit it)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="session")
def ray_cluster(worker_env):
    """One embedded local Ray (2 CPUs, loopback only), started the way dltrain starts it, for in-process runs."""
    from dltrain.cluster import ray_connection

    saved = dict(os.environ)
    os.environ.update(worker_env)
    try:
        with ray_connection(None):
            yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def completed_run(real_data, tmp_path_factory) -> Path:
    """The folder of one real, deterministic, 2-epoch run that COMPLETED, trained by `dltrain train`; tests copy it
    into storages of their own (copy_run), never change it."""
    storage = tmp_path_factory.mktemp("completed")
    trained = subprocess.run(
        [str(Path(sys.executable).parent / "dltrain"), "train", "trainer.epochs=2", "dataset.limit=1280",
         "trainer.batch_size=64", "trainer.deterministic=true", f"dataset.path={real_data}", f"storage.uri={storage}",
         "trainer.progress=epochs"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run,) = [path for path in storage.iterdir() if path.is_dir()]
    return run


@dataclass
class TwoWorkerRun:
    result: subprocess.CompletedProcess
    storage: Path  # the run's folder is the one folder in it
    left_behind: set[str]  # what the run added to the temporary folder


@pytest.fixture(scope="session")
def two_worker_run(real_data, tmp_path_factory) -> TwoWorkerRun:
    """One real deterministic run on 2 CPU workers, started as a user would: `python -m dltrain` with relative paths
    (the workers, which Ray runs in folders of their own, must find them), from the storage folder itself."""
    storage = tmp_path_factory.mktemp("two_workers")
    before = temporary_files()
    driver = subprocess.Popen(
        [sys.executable, "-m", "dltrain", "model=fashion", "resources=medium", "resources.use_gpu=false",
         *TWO_WORKER_RECIPE, f"dataset.path={os.path.relpath(real_data, storage)}", "storage.uri=."],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=storage,
    )  # fmt: skip
    stdout, stderr = driver.communicate(timeout=600)
    result = subprocess.CompletedProcess(driver.args, driver.returncode, stdout, stderr)
    run_id = stdout.split()[2] if stdout.startswith("dltrain: run ") else "?"
    # dltrain's own temporary files name the run or the driver's pid: another process's files are not this run's.
    added = temporary_files() - before
    ours = {name for name in added if not name.startswith("dltrain") or run_id in name or f"-pid{driver.pid}-" in name}
    return TwoWorkerRun(result, storage, ours)
