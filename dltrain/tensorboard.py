"""TensorBoard event files of a run's epochs, written with tensorboardX: no TensorFlow needed, whatever the
framework (Keras' own TensorBoard callback imports TensorFlow's summary writer)."""

from pathlib import Path

import keras
from tensorboardX import SummaryWriter


class EpochSummaries(keras.callbacks.Callback):
    """Each epoch's metrics as TensorBoard scalars, named as Keras' TensorBoard callback names them: `epoch_loss`
    and `epoch_accuracy` in `folder`/train, the `val_` metrics in `folder`/validation."""

    def __init__(self, folder: Path):
        super().__init__()
        self.writers = {part: SummaryWriter(str(folder / part)) for part in ("train", "validation")}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for name in ("loss", "accuracy"):
            for part, key in (("train", name), ("validation", f"val_{name}")):
                if key in (logs or {}):
                    self.writers[part].add_scalar(f"epoch_{name}", logs[key], epoch)
        for writer in self.writers.values():
            writer.flush()  # the epoch's report uploads the folder next

    def on_train_end(self, logs: dict | None = None) -> None:
        for writer in self.writers.values():
            writer.close()
