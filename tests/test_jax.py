"""framework=jax: the same Keras models on JAX, in the driver's process and on Ray Train workers that form one JAX
process group, with the real Fashion-MNIST data.

Every JAX run is its own `python -m dltrain` process: Keras keeps the backend it was first imported with, and this
test process imported it on TensorFlow. Those processes report whether TensorFlow was ever loaded in them.
"""

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import keras
import numpy as np
import pytest

from dltrain.data import fashion_mnist
from dltrain.job import StorageConfig
from dltrain.runs import RunStore
from dltrain.storage import open_storage

from helpers.ports import free_port

pytestmark = pytest.mark.slow

TIMEOUT_S = 600
KEY = "test-key-" + uuid.uuid4().hex  # the server's API key, passed through the environment as users would
# Plain SGD without dropout, as in the TensorFlow engine's 1-vs-2-worker test: its step is proportional to the
# gradient, so a wrongly scaled or missing all-reduce shows.
RECIPE = ["framework=jax", "dataset.limit=1280", "trainer.batch_size=64", "trainer.epochs=2", "model.dropout=0.0",
          "trainer.optimizer=sgd", "trainer.learning_rate=0.05", "trainer.progress=epochs"]  # fmt: skip
# `python -m dltrain`, then one last line saying whether TensorFlow was loaded in the driver's process.
DRIVER = (
    "import atexit, runpy, sys; "
    "atexit.register(lambda: print('tensorflow loaded:', sys.modules.get('tensorflow') is not None)); "
    "sys.argv = ['dltrain', *sys.argv[1:]]; runpy.run_module('dltrain', run_name='__main__')"
)


def _dltrain(worker_env: dict, *args: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", DRIVER, *args]
    return subprocess.run(command, capture_output=True, text=True, env=worker_env, timeout=timeout)


def _dump(folder: Path) -> str:
    return f"+trainer.callbacks.dump={{_target_: helpers.callbacks.DumpWorkerState, folder: '{folder}'}}"


def _weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]


def _run_id(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout.split()[2]


@pytest.fixture(scope="module")
def jax_runs(worker_env, real_data, tmp_path_factory):
    """The recipe on JAX by 1 worker (in the driver's process) and by 2 Ray Train workers: {workers: (driver's
    output, run folder, dump folder)}."""
    root = tmp_path_factory.mktemp("jax")
    env = {key: value for key, value in worker_env.items() if key != "RAY_ADDRESS"}
    runs = {}
    for workers in (1, 2):
        dumps = root / f"dumps-{workers}"
        result = _dltrain(env, *RECIPE, f"dataset.path={real_data}", f"storage.uri={root / 'runs'}",
                          f"resources.num_workers={workers}", _dump(dumps))  # fmt: skip
        runs[workers] = (result, root / "runs" / _run_id(result), dumps)
    return runs


def test_two_jax_workers_match_one_and_end_with_identical_weights(jax_runs):
    (one, one_folder, one_dumps), (two, two_folder, two_dumps) = jax_runs[1], jax_runs[2]
    assert "1 worker, in this process" in one.stdout and "2 worker(s)" in two.stdout
    for first, second in zip(_weights(two_dumps / "weights-0.npz"), _weights(two_dumps / "weights-1.npz"), strict=True):
        np.testing.assert_array_equal(first, second)
    initial = _weights(one_dumps / "initial-weights-0.npz")
    for start, other in zip(initial, _weights(two_dumps / "initial-weights-0.npz"), strict=True):
        np.testing.assert_array_equal(start, other)  # the same seed builds the same model on every worker
    histories = [RunStore(open_storage(StorageConfig(uri=str(folder.parent)))).get(folder.name).metrics()
                 for folder in (one_folder, two_folder)]  # fmt: skip
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert histories[0][0][key] == pytest.approx(histories[1][0][key], rel=1e-5)
    # After epoch 1, only the order of float additions differs (one global step, split across two processes).
    for start, single, double in zip(initial, _weights(one_dumps / "weights-0-epoch0.npz"),
                                     _weights(two_dumps / "weights-0-epoch0.npz"), strict=True):  # fmt: skip
        assert np.linalg.norm(single - double) <= 1e-4 * np.linalg.norm(single - start)


def test_the_jax_path_never_loads_tensorflow(jax_runs):
    for workers, (result, _, dumps) in jax_runs.items():
        assert result.stdout.splitlines()[-1] == "tensorflow loaded: False", workers  # the driver
        for rank in range(workers):
            seen = json.loads((dumps / f"worker-{rank}.json").read_text())
            assert (seen["keras_backend"], seen["tensorflow_loaded"]) == ("jax", False)


def test_a_jax_run_folder_holds_the_whole_run(jax_runs, real_data):
    _, folder, _ = jax_runs[2]
    run = RunStore(open_storage(StorageConfig(uri=str(folder.parent)))).get(folder.name)
    status = run.status()
    assert status["status"] == "COMPLETED" and status["versions"]["framework"] == "jax"
    assert {"jax", "jaxlib", "keras", "ray", "dltrain"} <= set(status["versions"]) and "tensorflow" not in status[
        "versions"
    ]
    assert run.config()["framework"]["name"] == "jax"
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["epoch-0001", "epoch-0002"]
    assert list((folder / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert list((folder / "tensorboard" / "validation").glob("events.out.tfevents.*"))
    assert (folder / "plots" / "curves.png").is_file() and (folder / "plots" / "confusion_matrix.png").is_file()
    # The model JAX trained loads on TensorFlow (this process) and scores what the run reported.
    model = keras.models.load_model(folder / "model" / "model.keras")
    _, (images, labels) = fashion_mnist.load(real_data)
    _, accuracy = model.evaluate(images / 255.0, labels, verbose=0)
    assert accuracy == pytest.approx(run.summary()["test_accuracy"], abs=1e-4)


def _jax_probabilities(model: Path, images: np.ndarray, env: dict) -> np.ndarray:
    """The probabilities of Keras on JAX, as in the run, for `images` (uint8)."""
    np.save(model.parent / "images.npy", images)
    code = ("import sys, numpy as np, keras; model = keras.models.load_model(sys.argv[1]); "
            "np.save(sys.argv[2], model.predict(np.load(sys.argv[2]) / 255.0, verbose=0))")  # fmt: skip
    subprocess.run([sys.executable, "-c", code, str(model), str(model.parent / "images.npy")],
                   env=env | {"KERAS_BACKEND": "jax"}, check=True, capture_output=True)  # fmt: skip
    return np.load(model.parent / "images.npy")


def test_dltrain_serve_answers_with_the_probabilities_of_the_jax_run(jax_runs, worker_env, real_data, tmp_path):
    _, folder, _ = jax_runs[1]
    images = fashion_mnist.load(real_data)[1][0][:8]
    expected = _jax_probabilities(folder / "model" / "model.keras", images, worker_env)
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "dltrain"), "serve", folder.name, "--storage", str(folder.parent),
         "--port", str(port), "--api-key-env", "DLTRAIN_TEST_KEY"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "DLTRAIN_TEST_KEY": KEY},
    )  # fmt: skip
    try:
        line = server.stdout.readline()  # once the replica is up
        assert line.startswith("dltrain: serving run"), line + server.stderr.read()[-3000:]
        tensor = {"name": "images", "shape": list(images.shape), "datatype": "UINT8", "data": images.ravel().tolist()}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/models/{folder.name}/infer", json.dumps({"inputs": [tensor]}).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as response:
            output = json.loads(response.read())["outputs"][0]
        np.testing.assert_allclose(np.reshape(output["data"], expected.shape), expected, rtol=1e-5, atol=1e-6)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()


def test_a_killed_jax_worker_restarts_the_group_from_the_last_checkpoint(worker_env, real_data, tmp_path):
    """Worker 1 is SIGKILLed in epoch 2: Ray Train restarts both workers, which form a new JAX process group and
    continue from epoch 1's checkpoint; no collective is left waiting on the dead process."""
    marker, runs = tmp_path / "killed", tmp_path / "runs"
    kill = f"+trainer.callbacks.kill={{_target_: helpers.callbacks.KillWorkerOnce, marker: '{marker}', epoch: 1}}"
    env = {key: value for key, value in worker_env.items() if key != "RAY_ADDRESS"}
    result = _dltrain(env, *RECIPE, "trainer.epochs=3", "resources.num_workers=2", f"dataset.path={real_data}",
                      f"storage.uri={runs}", kill, _dump(tmp_path / "dumps"))  # fmt: skip
    run = RunStore(open_storage(StorageConfig(uri=str(runs)))).get(_run_id(result))
    assert marker.exists() and run.status()["status"] == "COMPLETED"
    assert [row["epoch"] for row in run.metrics()] == [1, 2, 3]
    logs = {path.name: path.read_text() for path in (Path(run.path) / "logs").glob("worker-*.log")}
    assert len([name for name in logs if name.startswith("worker-1-")]) == 2  # the group was restarted
    assert len([text for text in logs.values() if "starting at epoch 2" in text]) == 2
    first, second = (_weights(tmp_path / "dumps" / f"weights-{rank}.npz") for rank in (0, 1))
    for mine, theirs in zip(first, second, strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_sigterm_stops_two_jax_workers_and_resume_continues_on_jax(worker_env, real_data, tmp_path):
    """SIGTERM (`ray job stop`, Kubernetes) ends the run STOPPED, never a hang in a collective; `resume=`, given no
    framework, continues it on JAX from its checkpoint."""
    runs = tmp_path / "runs"
    env = {key: value for key, value in worker_env.items() if key != "RAY_ADDRESS"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "dltrain", *RECIPE, "trainer.epochs=6", "resources.num_workers=2",
         f"dataset.path={real_data}", f"storage.uri={runs}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        run_id = driver.stdout.readline().split()[2]
        while not (line := driver.stdout.readline()).startswith("epoch 1/6"):
            assert line, driver.stderr.read()[-3000:]  # the driver ended before its first epoch
        driver.send_signal(signal.SIGTERM)
        _, stderr = driver.communicate(timeout=120)
    finally:
        driver.kill()
    assert driver.returncode == 130, stderr[-3000:]
    run = RunStore(open_storage(StorageConfig(uri=str(runs)))).get(run_id)
    assert run.status()["status"] == "STOPPED"
    done = len(run.metrics())

    result = _dltrain(env, f"resume={run_id}", f"storage.uri={runs}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "tensorflow loaded: False"  # the saved framework, not the default
    assert run.status()["status"] == "COMPLETED" and run.status()["versions"]["framework"] == "jax"
    assert [row["epoch"] for row in run.metrics()] == list(range(1, 7))
    logs = [path.read_text() for path in (Path(run.path) / "logs").glob("worker-0-*.log")]
    (resumed,) = [text for text in logs if "starting at epoch 1" not in text]
    # From a checkpoint (epoch 1's at least: its line was printed), skipping no epoch. The workers go on until the
    # embedded Ray ends with the driver, and an epoch's history row is stored before its checkpoint, whose copy
    # the end may cut short: the newest row can be an epoch that is trained again.
    assert 2 <= int(re.search(r"starting at epoch (\d+)", resumed)[1]) <= done + 1


def test_a_sweep_of_jax_trials_completes(worker_env, real_data, tmp_path):
    env = {key: value for key, value in worker_env.items() if key != "RAY_ADDRESS"}
    result = _dltrain(env, *RECIPE, "trainer.epochs=1", f"dataset.path={real_data}", f"storage.uri={tmp_path}",
                      "sweep=grid", "sweep.space.trainer.learning_rate='choice([0.01, 0.05])'",
                      "sweep.space.model.dropout='choice([0.0])'")  # fmt: skip
    sweep_id = _run_id(result)
    summary = json.loads((tmp_path / sweep_id / "summary.json").read_text())
    assert summary["trials"] == summary["completed"] == 2
    for trial in [path for path in tmp_path.iterdir() if path.name.startswith(f"{sweep_id}-")]:
        status = json.loads((trial / "status.json").read_text())
        assert status["status"] == "COMPLETED" and status["versions"]["framework"] == "jax"


def test_backbone_weights_move_between_tensorflow_and_jax_runs(worker_env, real_data, tmp_path):
    """A backbone a TensorFlow run trained is the frozen base of a JAX run, and that run's the frozen base of a
    TensorFlow run again: the weights arrive bit for bit either way."""
    env = {key: value for key, value in worker_env.items() if key != "RAY_ADDRESS"}
    # JAX trains only heads on frozen bases (its compilation of a whole MobileNetV2 takes minutes here), and two
    # classes keep the test sets small.
    common = [f"dataset.path={real_data}", f"storage.uri={tmp_path}", "model=backbone", "model.input_size=32",
              "dataset.classes=[0,1]", "dataset.per_class=20", "dataset.validation_split=0", "trainer.batch_size=20",
              "trainer.epochs=1", "trainer.progress=epochs"]  # fmt: skip
    first = _run_id(_dltrain(env, *common, "framework=tensorflow"))
    second = _run_id(_dltrain(env, *common, "framework=jax", f"model.weights=run:{first}", "model.freeze=true"))
    third = _run_id(_dltrain(env, *common, "framework=tensorflow", f"model.weights=run:{second}", "model.freeze=true"))
    models = [keras.models.load_model(tmp_path / run / "model" / "model.keras") for run in (first, second, third)]
    bases = [model.get_layer("backbone") for model in models]
    for earlier, later in itertools.pairwise(bases):
        for mine, theirs in zip(earlier.get_weights(), later.get_weights(), strict=True):
            np.testing.assert_array_equal(mine, theirs)
