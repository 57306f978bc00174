"""dltrain: Ray-based distributed training for TensorFlow/Keras."""

__version__ = "0.1.0"
