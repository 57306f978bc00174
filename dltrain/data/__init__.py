"""Data sets and input pipelines: pure NumPy / tf.data code, no Ray or Hydra.

A data set module offers INPUT_SHAPE, CLASS_NAMES, `prepare(path, mirror) -> folder` and
`load(folder) -> ((train_images, train_labels), (test_images, test_labels))`.
"""

from dltrain.data import fashion_mnist

DATASETS = {"fashion_mnist": fashion_mnist}
