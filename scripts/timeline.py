"""A Keras callback recording the wall-clock times of training's milestones, for the benchmark scripts.

Plain Keras gets it directly; dltrain gets it as `'+trainer.callbacks.timeline={_target_: timeline.Timeline,
path: /tmp/t.json}'` (Ray workers import it because the benchmarks put `scripts/` on PYTHONPATH). Only the
first worker (TF_CONFIG task index 0, or no TF_CONFIG) writes the file.
"""

import json
import os
import time
from pathlib import Path

import keras


def _worker_index() -> int:
    """This worker's index in MultiWorkerMirroredStrategy's TF_CONFIG; 0 for a lone process."""
    return int(json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {}).get("index", 0))


class Timeline(keras.callbacks.Callback):
    """Writes {train_begin, first_step, epoch_begin: [...], epoch_end: [...], train_end} (epoch seconds) to `path`,
    and epoch_begin_cpu / epoch_end_cpu: this process's CPU seconds at those moments (the work, whatever the load)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = Path(path)
        self.times: dict = {"epoch_begin": [], "epoch_end": [], "epoch_begin_cpu": [], "epoch_end_cpu": []}

    def _write(self) -> None:
        if _worker_index() == 0:
            self.path.write_text(json.dumps(self.times))

    def on_train_begin(self, logs=None):
        self.times["train_begin"] = time.time()

    def on_train_batch_begin(self, batch, logs=None):
        self.times.setdefault("first_step", time.time())

    def on_epoch_begin(self, epoch, logs=None):
        self.times["epoch_begin"].append(time.time())
        self.times["epoch_begin_cpu"].append(time.process_time())

    def on_epoch_end(self, epoch, logs=None):
        self.times["epoch_end"].append(time.time())
        self.times["epoch_end_cpu"].append(time.process_time())
        self._write()

    def on_train_end(self, logs=None):
        self.times["train_end"] = time.time()
        self._write()
