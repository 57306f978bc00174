"""Keras callbacks the tests pass through `trainer.callbacks`; Ray workers import them via PYTHONPATH."""

import json
import os
import signal
import sys
import time
from pathlib import Path

import keras
import numpy as np
import ray
import ray.train


class DumpWorkerState(keras.callbacks.Callback):
    """Each worker saves its initial weights, its weights after every epoch and at the end, and what it saw of
    the network (node address, TensorFlow's worker list) to `folder`."""

    def __init__(self, folder: str):
        super().__init__()
        self.folder = Path(folder)
        self.epochs_seen: list[int] = []

    def on_train_begin(self, logs=None):
        self.initial_weights = self.model.get_weights()

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_seen.append(epoch)
        rank = ray.train.get_context().get_world_rank()
        self.folder.mkdir(parents=True, exist_ok=True)
        np.savez(self.folder / f"weights-{rank}-epoch{epoch}.npz", *self.model.get_weights())

    def on_train_end(self, logs=None):
        rank = ray.train.get_context().get_world_rank()
        self.folder.mkdir(parents=True, exist_ok=True)
        np.savez(self.folder / f"weights-{rank}.npz", *self.model.get_weights())
        np.savez(self.folder / f"initial-weights-{rank}.npz", *self.initial_weights)
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
        seen = {
            "tensorflow_loaded": sys.modules.get("tensorflow") is not None,
            "keras_backend": keras.backend.backend(),
            "node_ip": ray.util.get_node_ip_address(),
            "tf_workers": tf_config.get("cluster", {}).get("worker", []),
            "epochs_seen": self.epochs_seen,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }
        (self.folder / f"worker-{rank}.json").write_text(json.dumps(seen))


class KillWorkerOnce(keras.callbacks.Callback):
    """Worker `rank` SIGKILLs its own process after batch `batch` of epoch `epoch`, once: `marker` remembers."""

    def __init__(self, marker: str, epoch: int, batch: int = 3, rank: int = 1):
        super().__init__()
        self.marker, self.kill_epoch, self.kill_batch, self.rank = Path(marker), epoch, batch, rank
        self.epoch = -1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) != (self.kill_epoch, self.kill_batch) or self.marker.exists():
            return
        if ray.train.get_context().get_world_rank() == self.rank:
            # Ray Train's controller collects reports on its 2 s health-check poll: give it time to register
            # the last epoch's checkpoint, as it has in any real epoch, before dying.
            time.sleep(5)
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


class FailOnce(keras.callbacks.Callback):
    """Raises RuntimeError("planned failure") after batch `batch` of epoch `epoch`, once: `marker` remembers."""

    def __init__(self, marker: str, epoch: int, batch: int = 3):
        super().__init__()
        self.marker, self.fail_epoch, self.fail_batch = Path(marker), epoch, batch
        self.epoch = -1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == (self.fail_epoch, self.fail_batch) and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            raise RuntimeError("planned failure")
