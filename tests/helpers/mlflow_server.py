"""A real MLflow tracking server for tests: `mlflow server` of the full `mlflow` package, in a virtual environment of
its own, on 127.0.0.1, with a SQLite store and an artifact folder in a temporary folder.

dltrain needs MLflow's client only (mlflow-skinny 3.18.0); the server needs the full package, whose 3.18.0 needs an
mlflow-tracing 3.18.0 that the package index lacks, and whose older versions pin another pyarrow than dltrain's.
So the server lives in its own venv, SERVER_VERSION, which the fixture builds from the package index once per
machine (about a minute) and keeps in ~/.cache/dltrain-test/ (or $DLTRAIN_TEST_CACHE), keyed by version and Python.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from helpers.ports import free_port

SERVER_VERSION = "3.17.2"  # the newest full mlflow whose mlflow-tracing the index has
HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0
INSTALL_TIMEOUT_S = 900
# Plain HTTP to the server on loopback, never through a proxy from the environment.
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def server_venv() -> Path:
    """The venv with mlflow==SERVER_VERSION, built here on first use (under a lock: parallel test processes wait for
    one build); a build that died half-way is built again."""
    cache = Path(os.environ.get("DLTRAIN_TEST_CACHE", Path.home() / ".cache" / "dltrain-test"))
    venv = cache / f"mlflow-venv-{SERVER_VERSION}-py{sys.version_info.major}.{sys.version_info.minor}"
    complete = venv / ".complete"
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{venv}.lock"):
        if not complete.is_file():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            installed = subprocess.run(
                [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                 f"mlflow=={SERVER_VERSION}"],
                capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
            )  # fmt: skip
            if installed.returncode != 0:
                raise RuntimeError(f"pip install mlflow=={SERVER_VERSION} failed:\n{installed.stderr[-3000:]}")
            complete.touch()
    return venv


@dataclass
class MlflowServer:
    """One running `mlflow server`, in a process group of its own (it starts uvicorn and a job runner)."""

    uri: str
    process: subprocess.Popen
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.uri.rsplit(":", 1)[1])

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after STOP_GRACE_S; wait for it."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_GRACE_S)
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def _healthy(uri: str) -> bool:
    try:
        with NO_PROXY.open(f"{uri}/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_server(workdir: Path) -> MlflowServer:
    """`mlflow server` on a free loopback port, its store and artifacts in `workdir`, once it answers /health."""
    python = server_venv() / "bin" / "python"
    port = free_port(HOST)
    log_path = workdir / "mlflow-server.log"
    command = [
        str(python), "-m", "mlflow", "server", "--host", HOST, "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination", str(workdir / "artifacts"),
    ]  # fmt: skip
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = MlflowServer(f"http://{HOST}:{port}", process, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _healthy(server.uri):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"mlflow server did not start (exit code {process.returncode}):\n{server.log_tail()}")
        time.sleep(0.2)
    return server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[MlflowServer]:
    """One real MLflow tracking server for the session."""
    server = start_server(tmp_path_factory.mktemp("mlflow"))
    try:
        yield server
    finally:
        server.stop()


def mirrored_runs(uri: str, experiment: str) -> dict[str, Any]:
    """The MLflow runs of an experiment on the server at `uri`, read back by MLflow's own client, by their
    dltrain.run_id tag, which no two of them share."""
    from mlflow import MlflowClient  # here: only the tests that read MLflow back import it

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r} at {uri}"
    runs = client.search_runs([found.experiment_id])
    by_id = {run.data.tags["dltrain.run_id"]: run for run in runs}
    assert len(by_id) == len(runs), sorted(run.data.tags["dltrain.run_id"] for run in runs)
    return by_id
