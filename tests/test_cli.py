"""`python -m dltrain ...` as a user runs it: whole runs in a subprocess, bad input, infeasible requests, resume
(Ctrl-C and `dltrain runs stop`: tests/test_runs_cli.py)."""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from dltrain.config import resolve, to_mapping
from dltrain.job import StorageConfig
from dltrain.runs import RunStore
from dltrain.storage import open_storage

from helpers.config import compose_config
from helpers.ports import free_port


def _dltrain(
    *args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m dltrain *args` as a user would (in `cwd`, else this directory)."""
    return subprocess.run(
        [sys.executable, "-m", "dltrain", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd
    )


def _epoch_lines(stdout: str) -> list[str]:
    """ "epoch 3/6" for each epoch line (the progress lines within an epoch go on with "  step ")."""
    return [line.split("  ")[0] for line in stdout.splitlines() if re.match(r"epoch \d+/\d+  loss ", line)]


def _only_run(storage: Path) -> Path:
    (run,) = [path for path in storage.iterdir() if path.is_dir()]
    return run


@pytest.mark.slow
def test_a_two_cpu_worker_run_from_relative_paths_writes_its_whole_folder(two_worker_run):
    # (4 workers of resources=large run across two nodes in test_cluster.py.)
    result, tmp_path = two_worker_run.result, two_worker_run.storage
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("dltrain: run ") and "2 worker(s)" in lines[1]
    assert _epoch_lines(result.stdout) == ["epoch 1/2", "epoch 2/2"]
    # Piped, the console shows progress as lines: 18 steps an epoch, a line at each quarter, then the epoch line.
    shown = [
        (line.split()[1], line.split()[3] if "  step " in line else "epoch line")
        for line in lines
        if re.match(r"epoch \d/2  (step \d+/18  \d+%  )?loss ", line)
    ]
    assert shown == [(epoch, at) for epoch in ("1/2", "2/2") for at in ("5/18", "9/18", "14/18", "epoch line")]
    assert "COMPLETED: test_accuracy" in lines[-1]
    # Nothing new is left (no driver log, worker stage, autograph file or Ray session); the run may well have removed
    # what earlier, killed processes left behind.
    assert not two_worker_run.left_behind
    assert not any(noise in result.stdout + result.stderr for noise in ("I0000", "oneDNN", "absl", "Traceback"))
    run = _only_run(tmp_path)
    assert lines[-1].endswith(str(run))
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["epochs"], summary["num_workers"]) == ("COMPLETED", 2, 2)
    assert json.loads((run / "status.json").read_text())["status"] == "COMPLETED"
    workers = {path.name.split("-pid")[0] for path in (run / "logs").glob("worker-*.log")}
    assert workers == {"worker-0", "worker-1"}
    assert (run / "model" / "model.keras").is_file() and (run / "config.yaml").is_file()
    # Each class's test accuracy; the test set holds 1,000 samples of each, so their mean is the test accuracy.
    per_class = summary["test_accuracy_per_class"]
    assert list(per_class)[:2] == ["T-shirt/top", "Trouser"] and len(per_class) == 10
    assert sum(per_class.values()) / 10 == pytest.approx(summary["test_accuracy"], abs=1e-9)
    confusion = json.loads((run / "model" / "confusion_matrix.json").read_text())["matrix"]
    assert [sum(row) for row in confusion] == [1000] * 10
    assert {path.name for path in (run / "plots").iterdir()} == {"curves.png", "confusion_matrix.png"}
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in (run / "plots").iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trainer.epochs=0"], "dltrain: error: trainer.epochs=0 is invalid: expected an integer >= 1"),
        (["resources=large", "trainer.batch_size=126"], "dltrain: error: trainer.batch_size=126 is not divisible"),
        (["dataset.path=/nonexistent/folder"], "dltrain: error: dataset: dataset.path=/nonexistent/folder lacks"),
        (["trainer.seed=-1"], "dltrain: error: trainer.seed=-1 is invalid: expected an integer from 0 to 4294967295"),
        (
            ["+trainer.callbacks.x={_target_: os.system, command: id}"],
            "dltrain: error: trainer.callbacks.x._target_=os.system is not a Keras callback class",
        ),
    ],
)
def test_bad_input_fails_fast_in_one_line_and_leaves_no_run(args, message, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as ray:  # the Ray cluster it is given, which it must not reach
        ray.setblocking(False)
        # Ray's switch for single-machine clusters keeps a driver's connection on 127.0.0.1, where this listens.
        address = f"127.0.0.1:{ray.getsockname()[1]}"
        env = {**os.environ, "RAY_ADDRESS": address, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        result = _dltrain(*args, f"storage.uri={tmp_path}/runs", env=env)
        with pytest.raises(BlockingIOError):
            ray.accept()  # no connection is waiting: it failed before it looked for Ray
    assert result.returncode == 2
    assert result.stderr.strip().startswith(message) and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unknown_group_option_lists_the_choices(tmp_path):
    result = _dltrain("resources=huge", f"storage.uri={tmp_path}")
    assert result.returncode != 0
    assert "Could not find 'resources/huge'" in result.stderr
    assert all(option in result.stderr for option in ("cpu", "small", "medium", "large"))


@pytest.mark.slow
def test_gpus_that_do_not_exist_fail_in_seconds(real_data, tmp_path):
    result = _dltrain("resources=large", f"dataset.path={real_data}", f"storage.uri={tmp_path}", timeout=180)
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("dltrain: error: resources need 4 workers x {CPU: 0.5, GPU: 1}; this Ray cluster has")
    assert "0 GPU and cannot scale" in error
    assert "use resources=cpu or resources.use_gpu=false" in error
    status = json.loads((_only_run(tmp_path) / "status.json").read_text())
    assert status["status"] == "FAILED" and "resources need" in status["error"]
    # Failed before Ray Train, which retries placing unplaceable workers without end, started any worker.
    assert [path.name for path in (_only_run(tmp_path) / "logs").iterdir()] == ["driver.log"]


@pytest.mark.slow
def test_resume_after_the_driver_dies_completes_the_same_run(real_data, tmp_path):
    args = ["dataset.limit=1280", "trainer.batch_size=64", f"dataset.path={real_data}", f"storage.uri={tmp_path}"]
    process = subprocess.Popen(
        [sys.executable, "-m", "dltrain", "trainer.epochs=6", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        for line in process.stdout:
            if line.startswith("epoch 2/6  loss"):
                break
        os.killpg(process.pid, signal.SIGKILL)  # the driver and its embedded Ray die at once, as in a reboot
        process.wait(timeout=30)
    finally:
        process.kill()
    run = _only_run(tmp_path)
    assert json.loads((run / "status.json").read_text())["status"] == "RUNNING"  # nobody could mark it
    assert not (run / "summary.json").exists()
    stages = f"dltrain-{run.name}-worker*"
    assert list(Path(tempfile.gettempdir()).glob(stages))  # the killed workers could not remove theirs
    result = _dltrain(f"resume={run.name}", f"storage.uri={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming run {run.name} (RUNNING)" in result.stdout
    epochs = _epoch_lines(result.stdout)
    first = int(epochs[0].split()[1].split("/")[0])
    assert 3 <= first <= 6 and epochs[-1] == "epoch 6/6"  # continued from a checkpoint, not from scratch
    assert epochs == [f"epoch {epoch}/6" for epoch in range(first, 7)]  # each new epoch printed once, in order
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "COMPLETED" and len(status["resumed"]) == 1
    assert json.loads((run / "summary.json").read_text())["epochs"] == 6
    assert pq.read_table(run / "metrics.parquet").column("epoch").to_pylist() == [1, 2, 3, 4, 5, 6]
    assert not list(Path(tempfile.gettempdir()).glob(stages))  # the resumed run removed them at its start
    again = _dltrain(f"resume={run.name}", f"storage.uri={tmp_path}")
    assert again.returncode == 0 and "already COMPLETED; nothing to resume" in again.stdout


@pytest.mark.slow
def test_a_failure_past_max_failures_in_the_driver_fails_the_run_in_one_line(worker_env, real_data, tmp_path):
    marker = tmp_path / "failed"
    fail = f"+trainer.callbacks.fail={{_target_: helpers.callbacks.FailOnce, marker: '{marker}', epoch: 0}}"
    small = ["trainer.epochs=2", "dataset.limit=1280", "trainer.batch_size=64", f"dataset.path={real_data}"]
    result = _dltrain("trainer.max_failures=0", *small, f"storage.uri={tmp_path / 'runs'}", fail, env=worker_env)
    assert result.returncode == 2
    run = _only_run(tmp_path / "runs")
    line = f"dltrain: error: run {run.name} FAILED: worker 0: RuntimeError: planned failure (logs: {run}/logs)"
    assert result.stderr.strip().splitlines()[-1] == line
    status = json.loads((run / "status.json").read_text())
    assert (status["status"], status["error"]) == ("FAILED", "worker 0: RuntimeError: planned failure")
    assert "RuntimeError: planned failure" in (run / "logs" / "driver.log").read_text()  # with its traceback


def test_resume_of_an_unknown_run_fails_in_one_line(tmp_path):
    result = _dltrain("resume=20990101-000000-abcdef", f"storage.uri={tmp_path}")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"dltrain: error: resume=20990101-000000-abcdef: no run '20990101-000000-abcdef' in {tmp_path}"
    )


@pytest.fixture
def logical_gpu_cluster(worker_env):
    """A real `ray start --head` cluster on 127.0.0.1 declaring 4 logical GPUs (there are none): its address."""
    port = free_port()
    env = {**worker_env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
    temp_dir = tempfile.mkdtemp(prefix="dltrain-ray-")  # short: Ray's unix socket paths must fit in 107 bytes
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}",
         "--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=4", "--include-dashboard=false",
         f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        status = [str(Path(sys.executable).parent / "ray"), "status", f"--address=127.0.0.1:{port}"]
        deadline = time.monotonic() + 120
        while subprocess.run(status, env=env, capture_output=True, timeout=60).returncode != 0:
            assert time.monotonic() < deadline, "the Ray head did not come up"
            time.sleep(2)
        yield f"127.0.0.1:{port}", env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        time.sleep(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # the GCS may outlive a SIGTERM
        head.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_gpu_profile_on_a_cluster_gives_each_worker_its_own_gpu(logical_gpu_cluster, real_data, tmp_path):
    address, env = logical_gpu_cluster
    dumps = tmp_path / "dumps"
    result = _dltrain(
        "resources=large", f"ray.address={address}", "trainer.epochs=1", "dataset.limit=1280",
        "trainer.batch_size=64", f"dataset.path={real_data}", f"storage.uri={tmp_path / 'runs'}",
        f"+trainer.callbacks.dump={{_target_: helpers.callbacks.DumpWorkerState, folder: '{dumps}'}}", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 worker(s) x {'CPU': 0.5, 'GPU': 1}" in result.stdout
    devices = [json.loads((dumps / f"worker-{rank}.json").read_text())["cuda_visible_devices"] for rank in range(4)]
    assert sorted(devices) == ["0", "1", "2", "3"]  # one GPU each; TensorFlow fell back to the CPU


def test_a_rerun_or_resume_of_an_edited_config_is_checked_before_anything_runs(tmp_path):
    """A config.yaml edited to call a function that is not a Keras callback (os.system, here) is refused in one line,
    as on the command line: nothing is called."""
    job = resolve(compose_config(f"storage.uri={tmp_path}"))
    run = RunStore(open_storage(StorageConfig(uri=str(tmp_path)))).create(to_mapping(job), {})
    run.set_status("FAILED", "the machine rebooted")
    saved = yaml.safe_load((tmp_path / run.id / "config.yaml").read_text())
    marker = tmp_path / "called"
    saved["trainer"]["callbacks"] = {"x": {"_target_": "os.system", "command": f"touch {marker}"}}
    (tmp_path / run.id / "config.yaml").write_text(yaml.safe_dump(saved))
    for key in ("rerun", "resume"):
        result = _dltrain(f"{key}={run.id}", f"storage.uri={tmp_path}")
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        refused = f"dltrain: error: {key}={run.id}: its saved config: trainer.callbacks.x._target_=os.system is not a"
        assert result.stderr.startswith(f"{refused} Keras callback class")
    assert not marker.exists() and sorted(path.name for path in tmp_path.iterdir()) == [run.id]
