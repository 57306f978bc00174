"""The reference convolutional classifier: conv blocks, one dense layer, softmax."""

from collections.abc import Sequence

import keras


def _normalize_and_activate(x: keras.KerasTensor, batch_norm: bool, suffix: str) -> keras.KerasTensor:
    """BatchNormalization then ReLU after a bias-free layer; unchanged when the layer applied its own ReLU."""
    if not batch_norm:
        return x
    # The statistics of the whole global batch, so every worker keeps the same moving statistics and normalizes as
    # one worker would (equal up to float rounding, which the normalization and the ReLU/max-pool kinks amplify
    # over the steps): on TensorFlow all-reduced over the workers (synchronized); on JAX the step is one function
    # of the whole global batch, where a plain layer already sees it all (and JAX rejects synchronized=True).
    synchronized = keras.backend.backend() == "tensorflow"
    x = keras.layers.BatchNormalization(synchronized=synchronized, name=f"batch_norm{suffix}")(x)
    return keras.layers.ReLU(name=f"relu{suffix}")(x)


def build_cnn(
    input_shape: Sequence[int],
    num_classes: int,
    filters: Sequence[int] = (32, 64, 128),
    kernel_size: int = 3,
    dropout: float = 0.4,
    dense_units: int = 128,
    padding: str = "valid",
    batch_norm: bool = False,
) -> keras.Model:
    """Conv2D + MaxPool + Dropout per entry of `filters`, then Dense + Dropout and a softmax classifier.

    With `batch_norm`, every conv and the dense layer is bias-free, followed by BatchNormalization and ReLU.
    """
    if not filters:
        raise ValueError("filters must name at least one conv block, e.g. [32, 64, 128]")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if not isinstance(batch_norm, bool):
        raise ValueError(f"batch_norm must be true or false, got {batch_norm!r}")
    activation = None if batch_norm else "relu"
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for block, block_filters in enumerate(filters, start=1):
        x = keras.layers.Conv2D(
            block_filters,
            kernel_size,
            padding=padding,
            activation=activation,
            use_bias=not batch_norm,
            kernel_initializer="he_normal",
            name=f"conv{block}",
        )(x)
        x = _normalize_and_activate(x, batch_norm, str(block))
        x = keras.layers.MaxPooling2D(2, name=f"pool{block}")(x)
        x = keras.layers.Dropout(dropout, name=f"dropout{block}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(dense_units, activation=activation, use_bias=not batch_norm, name="dense")(x)
    x = _normalize_and_activate(x, batch_norm, "_dense")
    x = keras.layers.Dropout(dropout, name="dense_dropout")(x)
    # float32 under any dtype policy (dltrain's trainer.precision): a float16 or bfloat16 softmax would round away
    # the small probabilities that the cross-entropy reads.
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="class_probabilities")(x)
    return keras.Model(inputs, outputs, name="cnn")
