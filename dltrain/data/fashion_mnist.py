"""Fashion-MNIST from its four official IDX files, located, downloaded if missing and verified."""

import hashlib
import os
from pathlib import Path

import keras
import numpy as np
from filelock import FileLock

from dltrain.data.dataset import DataSet
from dltrain.data.idx import IdxError, read_idx, verify_md5
from dltrain.data.pipeline import ArrayBatches, Split, train_validation_split
from dltrain.job import FashionMnistConfig, StorageConfig
from dltrain.storage import cache_dir, cache_s3_folder

# The official files and their published md5s (github.com/zalandoresearch/fashion-mnist).
FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
}
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
INPUT_SHAPE = (28, 28, 1)


def default_folder() -> Path:
    """$DLTRAIN_DATA_DIR, else a per-user cache folder."""
    return Path(os.environ.get("DLTRAIN_DATA_DIR") or Path.home() / ".cache" / "dltrain" / "fashion-mnist")


def _download(url: str, folder: Path, md5: str) -> None:
    """Fetch `url` into `folder` unless a file with the right md5 is there (keras' get_file shows progress)."""
    try:
        keras.utils.get_file(
            url.rsplit("/", 1)[1], origin=url, file_hash=md5, hash_algorithm="md5",
            cache_dir=str(folder), cache_subdir=str(folder),
        )  # fmt: skip
    except Exception as error:  # get_file raises several types (URL, HTTP, hash errors)
        raise IdxError(f"downloading {url} failed: {error}") from error


def _verified(path: Path, md5: str) -> bool:
    try:
        verify_md5(path, md5)
        return True
    except (IdxError, OSError):
        return False


def prepare(path: str | None, mirror: str, locks: Path | None = None) -> Path:
    """Return the folder holding the four verified files.

    A given `path` must already hold them. Without one, the default folder is used and any missing or
    corrupted file is downloaded from `mirror` (with progress) and checked against its published md5, under a
    lock in the folder `locks` (required then): nothing but the data files is written into a data folder, which
    may be read-only once they are there.
    """
    if path is not None:
        folder = Path(path).expanduser().absolute()
        missing = [name for name, _ in FILES.values() if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"dataset.path={folder} lacks {', '.join(missing)}")
        for name, md5 in FILES.values():
            verify_md5(folder / name, md5)
        return folder
    folder = default_folder()
    stale = [(name, md5) for name, md5 in FILES.values() if not _verified(folder / name, md5)]
    if stale:
        if locks is None:
            raise ValueError("downloading the data set needs a folder for its lock (locks=)")
        folder.mkdir(parents=True, exist_ok=True)
        locks.mkdir(parents=True, exist_ok=True)
        lock = locks / f"data-{hashlib.sha256(str(folder.absolute()).encode()).hexdigest()[:16]}.lock"
        with FileLock(lock):  # one download when several workers share a node
            for name, md5 in stale:
                _download(mirror.rstrip("/") + "/" + name, folder, md5)
        for name, md5 in stale:
            verify_md5(folder / name, md5)
    return folder


def load(folder: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((train_images, train_labels), (test_images, test_labels)) as uint8 arrays, images shaped (n, 28, 28, 1)."""
    arrays = {key: read_idx(Path(folder) / name) for key, (name, _) in FILES.items()}
    train = (arrays["train_images"][..., np.newaxis], arrays["train_labels"])
    test = (arrays["test_images"][..., np.newaxis], arrays["test_labels"])
    return train, test


def select(images: np.ndarray, labels: np.ndarray, classes: list[int] | None, per_class: int | None = None) -> Split:
    """The samples of `classes` (all if None), relabelled 0, 1, ... in the order given; with `per_class`, only
    the first that many of each class."""
    if classes is not None:
        keep = np.isin(labels, classes)
        lookup = np.zeros(len(CLASS_NAMES), np.uint8)
        lookup[list(classes)] = np.arange(len(classes))
        images, labels = images[keep], lookup[labels[keep]]
    if per_class is not None:
        keep = np.zeros(len(labels), bool)
        for label in np.unique(labels):
            keep[np.flatnonzero(labels == label)[:per_class]] = True
        images, labels = images[keep], labels[keep]
    return Split(images, labels)


def class_names(dataset: FashionMnistConfig) -> tuple[str, ...]:
    """The names of the classes a `dataset` config trains on, in label order."""
    classes = dataset.classes
    return CLASS_NAMES if classes is None else tuple(CLASS_NAMES[number] for number in classes)


def _split(images: np.ndarray, labels: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray,
           dataset: FashionMnistConfig, seed: int) -> dict[str, Split]:  # fmt: skip
    """The train, validation and test splits a `dataset` config asks for."""
    train, validation = train_validation_split(
        *select(images, labels, dataset.classes, dataset.per_class), dataset.validation_split, seed,
        dataset.limit,
    )  # fmt: skip
    return {"train": train, "validation": validation, "test": select(test_images, test_labels, dataset.classes)}


def splits(folder: Path, dataset: FashionMnistConfig, seed: int) -> ArrayBatches:
    """The train, validation and test splits a `dataset` config asks for, from the files in `folder`."""
    (images, labels), (test_images, test_labels) = load(folder)
    return ArrayBatches(_split(images, labels, test_images, test_labels, dataset, seed), dataset.flip,
                        dataset.shift)  # fmt: skip


def _sizes(folder: Path, dataset: FashionMnistConfig, seed: int) -> dict[str, int]:
    """Samples per split, from the label files alone: the splits of the images' indices."""
    labels, test_labels = (read_idx(Path(folder) / FILES[key][0]) for key in ("train_labels", "test_labels"))
    indices = _split(np.arange(len(labels)), labels, np.arange(len(test_labels)), test_labels, dataset, seed)
    return {name: len(split.labels) for name, split in indices.items()}


def _folder(dataset: FashionMnistConfig, storage: StorageConfig) -> Path:
    """The local folder holding the verified files; an s3:// path is first cached on this machine, read with the
    storage's endpoint and region."""
    path = dataset.path
    if path and path.startswith("s3://"):
        names = [name for name, _ in FILES.values()]
        path = str(cache_s3_folder(path, names, storage.endpoint_url, storage.region, storage.retry_seconds))
    return prepare(path, dataset.mirror, locks=cache_dir() / "locks")


def describe(dataset: FashionMnistConfig, storage: StorageConfig, seed: int) -> DataSet:
    """The driver's check of a `dataset` config: the files located (downloaded if needed) and verified."""
    folder = _folder(dataset, storage)
    # dataset.path is read on every node (each finds or downloads its own files where it is null).
    return DataSet(
        INPUT_SHAPE, class_names(dataset), str(folder), {name: md5 for name, md5 in FILES.values()},
        _sizes(folder, dataset, seed), shared_path=dataset.path,
    )  # fmt: skip


def batches(dataset: FashionMnistConfig, data: DataSet, storage: StorageConfig, seed: int) -> ArrayBatches:
    """A worker's batches: the files located again on its own machine (whose cache may differ from the driver's)."""
    return splits(_folder(dataset, storage), dataset, seed)
