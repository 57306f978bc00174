"""The engine on a real embedded Ray with several worker processes and the real Fashion-MNIST data."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import pytest

from dltrain.config import resolve
from dltrain.job import StorageConfig
from dltrain.launch import train
from dltrain.runs import RunStore
from dltrain.storage import open_storage

from helpers.config import compose_config

pytestmark = pytest.mark.slow


def _job(data: Path, runs: Path, *overrides: str) -> dict:
    return resolve(
        compose_config(
            f"dataset.path={data}", f"storage.uri={runs}", "dataset.limit=1280", "trainer.batch_size=64",
            "trainer.epochs=2", *overrides,
        )
    )  # fmt: skip


def _dump_callback(folder: Path) -> str:
    return f"+trainer.callbacks.dump={{_target_: helpers.callbacks.DumpWorkerState, folder: '{folder}'}}"


def _weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]


@pytest.fixture(scope="module")
def one_and_two_workers(ray_cluster, real_data, tmp_path_factory):
    """The same recipe trained by 1 and by 2 workers: same seed and global batch, no dropout, and plain SGD,
    whose step is proportional to the gradient (Adam's would hide a wrongly scaled gradient)."""
    root = tmp_path_factory.mktemp("engine")
    outcome = {}
    for workers in (1, 2):
        dumps = root / f"dumps-{workers}"
        job = _job(
            real_data, root / "runs", f"resources.num_workers={workers}", "model.dropout=0.0",
            "trainer.optimizer=sgd", "trainer.learning_rate=0.05", _dump_callback(dumps),
        )  # fmt: skip
        outcome[workers] = (train(job), dumps)
    return root / "runs", outcome


def test_two_workers_end_with_identical_weights(one_and_two_workers):
    _, outcome = one_and_two_workers
    _, dumps = outcome[2]
    for first, second in zip(_weights(dumps / "weights-0.npz"), _weights(dumps / "weights-1.npz"), strict=True):
        np.testing.assert_array_equal(first, second)


def test_two_workers_match_one_worker(one_and_two_workers):
    runs, outcome = one_and_two_workers
    dumps = {workers: folder for workers, (_, folder) in outcome.items()}
    initial = _weights(dumps[1] / "initial-weights-0.npz")
    for start, other in zip(initial, _weights(dumps[2] / "initial-weights-0.npz"), strict=True):
        np.testing.assert_array_equal(start, other)
    # After the first epoch (18 steps) only the order of float additions differs: the gap is float noise,
    # a ten-thousandth of the distance trained. A wrongly scaled or missing gradient all-reduce, or workers
    # on the wrong data, would show here at the size of the update itself.
    one, two = _weights(dumps[1] / "weights-0-epoch0.npz"), _weights(dumps[2] / "weights-0-epoch0.npz")
    for start, single, double in zip(initial, one, two, strict=True):
        assert np.linalg.norm(single - double) <= 1e-4 * np.linalg.norm(single - start)
        np.testing.assert_allclose(single, double, atol=1e-5)
    # Later, ReLU and max-pool kinks amplify that noise in jumps (measured: 1e-6 -> 6e-3 over epoch 2),
    # so the trained models agree closely but not bit for bit.
    one, two = _weights(dumps[1] / "weights-0.npz"), _weights(dumps[2] / "weights-0.npz")
    for start, single, double in zip(initial, one, two, strict=True):
        assert np.linalg.norm(single - double) <= 0.2 * np.linalg.norm(single - start)
    store = RunStore(open_storage(StorageConfig(uri=str(runs))))
    history = {w: store.get(summary["run_id"]).metrics() for w, (summary, _) in outcome.items()}
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert history[1][0][key] == pytest.approx(history[2][0][key], rel=1e-5)
        # Epoch 2 carries that amplified noise: 2.5% on the loss with the packages resolved on 2026-11-23, the
        # landed code of the day before included (1.1375 vs 1.1661, deterministic); it was under 2% before.
        assert history[1][1][key] == pytest.approx(history[2][1][key], rel=5e-2)
    assert outcome[1][0]["test_accuracy"] == pytest.approx(outcome[2][0]["test_accuracy"], abs=0.04)  # 0.5939 / 0.5674


def test_workers_talk_on_loopback_only(one_and_two_workers):
    _, outcome = one_and_two_workers
    for rank in (0, 1):
        seen = json.loads((outcome[2][1] / f"worker-{rank}.json").read_text())
        assert seen["node_ip"] == "127.0.0.1"
        assert len(seen["tf_workers"]) == 2 and all(a.startswith("127.0.0.1:") for a in seen["tf_workers"])
        assert seen["epochs_seen"] == [0, 1]  # the user's callback saw every epoch
    lone = json.loads((outcome[1][1] / "worker-0.json").read_text())
    assert lone["tf_workers"] == []  # one worker starts no TensorFlow server at all


def test_embedded_ray_starts_no_preemption_watcher(one_and_two_workers):
    """One machine has no preemptible nodes: Ray Train's preemption watcher would be one more process polling."""
    import ray

    started = {actor["ActorClassName"] for actor in ray._private.state.actors().values()}
    assert {"TrainController", "RayTrainWorker"} <= started  # what the runs above started
    assert "PreemptionWatcher" not in started, started


def test_run_folder_holds_the_whole_run(one_and_two_workers):
    runs, outcome = one_and_two_workers
    summary, _ = outcome[2]
    run = RunStore(open_storage(StorageConfig(uri=str(runs)))).get(summary["run_id"])
    folder = Path(run.path)
    assert run.status()["status"] == "COMPLETED" and run.status()["error"] is None
    assert set(run.status()["versions"]) == {"framework", "dltrain", "tensorflow", "keras", "ray"}
    assert run.summary() == summary
    assert summary["epochs"] == 2 and summary["num_workers"] == 2 and 0.1 < summary["test_accuracy"] <= 1
    assert run.config()["resources"]["num_workers"] == 2
    rows = run.metrics()
    assert [row["epoch"] for row in rows] == [1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "seconds", "samples_per_second"} <= set(rows[0])
    assert all(row["checkpoint_seconds"] > 0 for row in rows)  # measured in every epoch (a NaN fails here)
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["epoch-0001", "epoch-0002"]
    model = keras.models.load_model(folder / "model" / "model.keras")
    assert model.output_shape == (None, 10)
    assert list((folder / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert list((folder / "tensorboard" / "validation").glob("events.out.tfevents.*"))
    logs = sorted(p.name for p in (folder / "logs").iterdir())
    assert "driver.log" in logs and any(name.startswith("worker-0-") for name in logs)
    assert any(name.startswith("worker-1-") for name in logs)


def test_final_model_reproduces_the_reported_test_accuracy(one_and_two_workers, real_data):
    from dltrain.data import fashion_mnist

    runs, outcome = one_and_two_workers
    summary, _ = outcome[1]
    model = keras.models.load_model(Path(runs) / summary["run_id"] / "model" / "model.keras")
    _, (images, labels) = fashion_mnist.load(real_data)
    loss, accuracy = model.evaluate(images / 255.0, labels, verbose=0)
    assert accuracy == pytest.approx(summary["test_accuracy"], abs=1e-4)
    assert loss == pytest.approx(summary["test_loss"], rel=1e-3)


def test_embedded_ray_listens_on_loopback_only(ray_cluster):
    ss = shutil.which("ss") or pytest.skip("ss (iproute2) is not installed")
    listening = subprocess.run([ss, "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines()
    ray_sockets = [line.split()[3] for line in listening if re.search(r'"(gcs_server|raylet|ray::[^"]*)"', line)]
    assert len(ray_sockets) >= 3  # the GCS, the raylet and at least one worker process
    assert all(address.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:")) for address in ray_sockets), ray_sockets


def test_a_killed_worker_restarts_from_the_last_checkpoint(ray_cluster, real_data, tmp_path):
    """With batch norm and a cosine schedule: the restarted workers continue both from the checkpoint."""
    marker = tmp_path / "killed"
    kill = f"+trainer.callbacks.kill={{_target_: helpers.callbacks.KillWorkerOnce, marker: '{marker}', epoch: 1}}"
    job = _job(
        real_data, tmp_path / "runs", "resources.num_workers=2", "trainer.epochs=3", "model.batch_norm=true",
        "trainer.lr_schedule=cosine", kill, _dump_callback(tmp_path / "dumps"),
    )  # fmt: skip
    summary = train(job)
    assert marker.exists()  # worker 1 really died mid-epoch 2
    # Its stage was removed by the restarted workers, and theirs when they ended.
    assert not list(Path(tempfile.gettempdir()).glob(f"dltrain-{summary['run_id']}-worker*"))
    run = RunStore(open_storage(StorageConfig(uri=str(tmp_path / "runs")))).get(summary["run_id"])
    assert run.status()["status"] == "COMPLETED" and summary["epochs"] == 3
    assert [row["epoch"] for row in run.metrics()] == [1, 2, 3]  # no epoch missing or repeated
    logs = {path.name: path.read_text() for path in (Path(run.path) / "logs").glob("worker-*.log")}
    assert len([name for name in logs if name.startswith("worker-1-")]) == 2  # the group was restarted
    restarted = [text for text in logs.values() if "starting at epoch 2" in text]
    assert len(restarted) == 2  # both new workers resumed after epoch 1: only the killed epoch was redone
    # 4 kernels, 4 batch norms x (gamma, beta, moving mean, moving variance), the output kernel and bias: the
    # moving statistics, which each worker updates itself, stay identical on both workers.
    first, second = _weights(tmp_path / "dumps" / "weights-0.npz"), _weights(tmp_path / "dumps" / "weights-1.npz")
    assert len(first) == 22
    for mine, theirs in zip(first, second, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    # The step counter came back with the checkpoint: 3 epochs x 18 steps in all, and the schedule ran out at 0.
    optimizer = keras.models.load_model(Path(run.path) / "model" / "model.keras").optimizer
    assert int(optimizer.iterations) == 3 * 18
    assert float(optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)


def test_a_run_in_the_driver_restarts_after_a_failure_and_resumes_on_ray_train_workers(
    ray_cluster, worker_env, real_data, tmp_path
):
    """The default single-worker run trains in the driver's process (no Ray): it restarts from its newest
    checkpoint after a failure, as Ray Train would; killed, it resumes on a Ray Train worker from that folder, from
    its newest whole checkpoint."""
    failed, killed = tmp_path / "failed", tmp_path / "killed"
    runs = tmp_path / "runs"
    process = subprocess.run(
        [sys.executable, "-m", "dltrain", f"dataset.path={real_data}", f"storage.uri={runs}", "dataset.limit=1280",
         "trainer.batch_size=64", "trainer.epochs=4", "trainer.progress=epochs",
         f"+trainer.callbacks.fail={{_target_: helpers.callbacks.FailOnce, marker: '{failed}', epoch: 1}}",
         f"+trainer.callbacks.kill={{_target_: helpers.callbacks.KillWorkerOnce, marker: '{killed}', epoch: 2, "
         "rank: 0}"],
        capture_output=True, text=True, env={k: v for k, v in worker_env.items() if k != "RAY_ADDRESS"}, timeout=300,
    )  # fmt: skip
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
    assert "1 worker, in this process (resources.local_mode)" in process.stdout
    assert "dltrain: worker 0 failed (RuntimeError: planned failure); restarting from the newest checkpoint " \
           "(failure 1 of trainer.max_failures=2)" in process.stderr  # fmt: skip
    assert int(failed.read_text()) == int(killed.read_text())  # the driver's own process trained, and was killed
    (run_id,) = os.listdir(runs)
    folder = runs / run_id
    assert sorted(os.listdir(folder / "checkpoints")) == ["epoch-0001", "epoch-0002"]  # in Ray's layout
    assert not (folder / "checkpoint_manager_snapshot.json").exists()  # Ray Train kept no record: it never ran
    # The driver's pid names the log, and the restart's log is kept beside it.
    logs = [folder / "logs" / f"worker-0-pid{failed.read_text()}{end}.log" for end in ("", "-restart1")]
    assert set((folder / "logs").glob("worker-0-*.log")) == set(logs)
    assert ["starting at epoch 1" in logs[0].read_text(), "starting at epoch 2" in logs[1].read_text()] == [True] * 2

    # A kill can cut a checkpoint's copy short, its state file whole: resume passes over it for the one before.
    model = folder / "checkpoints" / "epoch-0002" / "model.keras"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    summary = train(resolve(compose_config(f"resume={run_id}", f"storage.uri={runs}")))  # a Ray is connected
    assert (summary["status"], summary["epochs"]) == ("COMPLETED", 4)
    run = RunStore(open_storage(StorageConfig(uri=str(runs)))).get(run_id)
    assert [row["epoch"] for row in run.metrics()] == [1, 2, 3, 4]
    assert (folder / "checkpoint_manager_snapshot.json").exists()  # this time a Ray Train worker trained
    (resumed,) = [path for path in (folder / "logs").glob("worker-0-*.log") if path not in logs]
    text = resumed.read_text()
    assert "worker 0: checkpoint epoch-0002 does not load (File is not a zip file); trying the one before" in text
    assert "starting at epoch 2" in text
