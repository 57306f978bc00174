"""A trained run's model as a classifier: probabilities and the top-k classes for batches of images."""

import tempfile
from pathlib import Path

import keras
import numpy as np

PREDICT_BATCH = 256  # images per model call: bounded memory for large requests


def keras_model(model_bytes: bytes) -> keras.Model:
    """The model of a `.keras` file's bytes, not compiled (for predictions), on this process's Keras backend."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"
        path.write_bytes(model_bytes)
        return keras.saving.load_model(path, compile=False)


class Classifier:
    """A `.keras` model (its file's bytes) and its class names; inputs are pixels 0-255 or values in [0, 1]."""

    def __init__(self, model_bytes: bytes, class_names: list[str]):
        import tensorflow as tf  # here: keras_model() alone serves a process on another Keras backend too

        self.model = keras_model(model_bytes)
        self.class_names = list(class_names)
        self.input_shape = tuple(self.model.input_shape[1:])
        # One traced graph for every batch size: an eager call of the model costs several times the compute.
        self._forward = tf.function(
            lambda inputs: self.model(inputs, training=False),
            input_signature=[tf.TensorSpec((None, *self.input_shape), tf.float32)],
        )
        if self.model.output_shape[-1] != len(self.class_names):
            raise ValueError(f"the model has {self.model.output_shape[-1]} outputs for {len(self.class_names)} classes")

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities (float32, one row per input) of a batch shaped like the model's input batch: uint8
        pixels are scaled to [0, 1] as in training; float inputs are taken as already scaled."""
        scaled = inputs.astype(np.float32) / 255.0 if inputs.dtype == np.uint8 else inputs.astype(np.float32)
        rows = [self._forward(scaled[start : start + PREDICT_BATCH]).numpy().astype(np.float32)
                for start in range(0, len(scaled), PREDICT_BATCH)]  # fmt: skip
        return np.concatenate(rows) if rows else np.zeros((0, len(self.class_names)), np.float32)

    def top(self, probabilities: np.ndarray, k: int) -> list[list[dict]]:
        """The `k` most likely classes of each row, most likely first: [{label, probability}]."""
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return [
            [{"label": self.class_names[i], "probability": float(row[i])} for i in indices]
            for row, indices in zip(probabilities, order, strict=True)
        ]
