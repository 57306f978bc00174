"""Progress within an epoch, on rank 0: a Keras callback that sends the step count, the running loss and accuracy,
samples/s and an ETA to the driver's console now and then.

It reads the logs the loop already brings to the host for its callbacks at every batch end (every step, or every
trainer.steps_per_execution steps): sending costs no device sync, only a clock read, and a message about once a
second.
"""

import time
from collections.abc import Callable

import keras

SEND_EVERY_S = 1.0  # a live bar moves this often; the console picks its plain lines out of these messages
QUARTERS = 4  # and one message as each quarter of the epoch is done, for the console's lines at 25%, 50%, 75%


class ProgressSender(keras.callbacks.Callback):
    """Calls `send(message)` with the progress of the running epoch, at most every SEND_EVERY_S and at each
    quarter; not at the epoch's first batch end (rates are measured from it) nor at its last step, whose epoch line
    follows. With steps_per_execution K the loop ends a batch every K steps: quarters are seen at the next one.

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
        self._first = self._sent = 0.0  # when the epoch's first batch ended, and the last message was sent
        self._first_done = 0  # steps done at the epoch's first batch end (K with steps_per_execution K); 0: not yet
        self._quarter = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch + 1
        self._first_done = self._quarter = 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        done = batch + 1
        now = self.clock()
        if not self._first_done:  # rates count from here: the first steps of a run also trace and compile
            self._first, self._sent, self._first_done = now, now, done
            return
        if done >= self.steps:
            return
        quarter = done * QUARTERS // self.steps
        if quarter == self._quarter and now - self._sent < SEND_EVERY_S:
            return
        self._quarter, self._sent = quarter, now
        seconds_per_step = max(now - self._first, 1e-9) / (done - self._first_done)
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
