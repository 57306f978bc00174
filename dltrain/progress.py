"""Progress within an epoch, on rank 0: a Keras callback that sends the step count, the running loss and accuracy,
samples/s and an ETA to the driver's console now and then.

It reads the logs the loop already brings to the host for its callbacks at every step: sending costs the step no
device sync, only a clock read, and a message about once a second.
"""

import time
from collections.abc import Callable

import keras

SEND_EVERY_S = 1.0  # a live bar moves this often; the console picks its plain lines out of these messages
QUARTERS = 4  # and one message as each quarter of the epoch is done, for the console's lines at 25%, 50%, 75%


class ProgressSender(keras.callbacks.Callback):
    """Calls `send(message)` with the progress of the running epoch, at most every SEND_EVERY_S and at each
    quarter; not at the epoch's first step (rates are measured from its end) nor at its last, whose epoch line
    follows.

    A message: {"kind": "progress", "epoch", "epochs", "step", "steps", "loss", "accuracy", "samples_per_second",
    "eta_seconds"}, with 1-based epoch and step counts.
    """

    def __init__(
        self,
        send: Callable[[dict], None],
        epochs: int,
        steps: int,
        global_batch_size: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__()
        self.send = send
        self.epochs, self.steps, self.global_batch_size = epochs, steps, global_batch_size
        self.clock = clock
        self.epoch = 0
        self._first = self._sent = 0.0  # when the epoch's first step ended, and the last message was sent
        self._quarter = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch + 1
        self._quarter = 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        done = batch + 1
        now = self.clock()
        if done == 1:  # rates count from here: the first step of a run also traces and compiles the step
            self._first, self._sent = now, now
            return
        if done >= self.steps:
            return
        quarter = done * QUARTERS // self.steps
        if quarter == self._quarter and now - self._sent < SEND_EVERY_S:
            return
        self._quarter, self._sent = quarter, now
        seconds_per_step = max(now - self._first, 1e-9) / (done - 1)
        logs = logs or {}
        self.send(
            {
                "kind": "progress",
                "epoch": self.epoch,
                "epochs": self.epochs,
                "step": done,
                "steps": self.steps,
                "loss": logs.get("loss"),
                "accuracy": logs.get("accuracy"),
                "samples_per_second": self.global_batch_size / seconds_per_step,
                "eta_seconds": (self.steps - done) * seconds_per_step,
            }
        )
