"""`trainer.precision`: the Keras dtype policy a model is built under."""

import contextlib
from collections.abc import Iterator

import keras


@contextlib.contextmanager
def dtype_policy(precision: str) -> Iterator[None]:
    """Build models under the Keras dtype policy `precision` (float32, mixed_float16 or mixed_bfloat16), then
    restore the global policy: each layer keeps the policy it was built with, and the process, which may go on to
    build other models (a driver training its job itself), is left as it was."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
