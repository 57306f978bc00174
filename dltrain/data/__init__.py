"""Data sets and input pipelines: pure NumPy / tf.data code, no Ray or Hydra.

A data set module offers INPUT_SHAPE, CLASS_NAMES, FILES ({key: (file name, md5)}),
`prepare(path, mirror) -> folder` and
`load(folder) -> ((train_images, train_labels), (test_images, test_labels))`.
"""

from pathlib import Path

from dltrain.data import fashion_mnist
from dltrain.storage import cache_dir, cache_s3_folder

DATASETS = {"fashion_mnist": fashion_mnist}


def prepare(dataset: dict, storage: dict) -> Path:
    """The local folder holding `dataset`'s verified files; an s3:// path is first cached on this machine,
    read with the storage's endpoint and region."""
    module = DATASETS[dataset["name"]]
    path = dataset["path"]
    if path and path.startswith("s3://"):
        names = [name for name, _ in module.FILES.values()]
        path = str(cache_s3_folder(path, names, storage["endpoint_url"], storage["region"], storage["retry_seconds"]))
    return module.prepare(path, dataset["mirror"], locks=cache_dir() / "locks")
