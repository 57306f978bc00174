"""The reference convolutional classifier: conv blocks, one dense layer, softmax."""

from collections.abc import Sequence

import keras


def build_cnn(
    input_shape: Sequence[int],
    num_classes: int,
    filters: Sequence[int] = (32, 64, 128),
    kernel_size: int = 3,
    dropout: float = 0.4,
    dense_units: int = 128,
    padding: str = "valid",
) -> keras.Model:
    """Conv2D + MaxPool + Dropout per entry of `filters`, then Dense + Dropout and a softmax classifier."""
    if not filters:
        raise ValueError("filters must name at least one conv block, e.g. [32, 64, 128]")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for block, block_filters in enumerate(filters, start=1):
        x = keras.layers.Conv2D(
            block_filters,
            kernel_size,
            padding=padding,
            activation="relu",
            kernel_initializer="he_normal",
            name=f"conv{block}",
        )(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{block}")(x)
        x = keras.layers.Dropout(dropout, name=f"dropout{block}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="dense")(x)
    x = keras.layers.Dropout(dropout, name="dense_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="class_probabilities")(x)
    return keras.Model(inputs, outputs, name="cnn")
