"""Shared fixtures: composed configs, the real Fashion-MNIST folder, one embedded Ray for engine tests, and one
real completed run for the tests of the commands that read runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from outage import s3_outages  # noqa: F401 - fixtures for every test module
from s3server import s3_bucket, s3_server, s3_session_server  # noqa: F401

from dltrain.__main__ import CONFIG_DIR

TESTS_DIR = Path(__file__).parent
DATA_DIR = (TESTS_DIR.parent.parent / "shared" / "data" / "fashion-mnist").resolve()


def compose_config(*overrides: str):
    """The config `python -m dltrain *overrides` would get."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


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
