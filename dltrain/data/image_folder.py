"""The user's own images: a folder of CLASS/*.png|jpg|... or a CSV/Parquet manifest with a `path` column and
metadata, labelled by the column `dataset.label`, read from Parquet shards (shards.py), decoded with Pillow.

Classes are the label's values that have at least `dataset.min_per_class` images, sorted. The test set is the
rows a `split` column marks `test`, or a seeded, stratified `dataset.test_split` share of each class; the
validation set a stratified `dataset.validation_split` share of the rest. Training streams every epoch from the
shards: each worker decodes and resizes its own rows of the split (every N-th), shuffled in a buffer.
"""

import hashlib
import io
import itertools
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
from filelock import FileLock
from PIL import Image

from dltrain.data import shards
from dltrain.data.dataset import DataSet
from dltrain.data.pipeline import Batch, augment, draw_augmentation, prefetched, scale, steps_per_epoch
from dltrain.job import ImageFolderConfig, StorageConfig
from dltrain.storage import cache_dir, open_storage, resolver

SPLITS = ("train", "validation", "test")
_SPLIT_VALUES = {"train": 0, "validation": 1, "val": 1, "test": 2}  # what a `split` column may say
DEFAULT_TEST_SPLIT = 0.1  # of each class, where neither dataset.test_split nor a split column says otherwise
SHARD_BYTES = 64 * 2**20  # of images per shard that training prepares: a few seconds' reading each
PREPARED = "datasets"  # the storage's folder of data sets training prepared from folders and manifests
DECODE_THREADS = os.cpu_count() or 1  # Pillow decodes and resizes without the GIL


@dataclass(frozen=True)
class Plan:
    """Which class and split every row of the shards belongs to (-1: a row that is not used)."""

    class_names: tuple[str, ...]
    row_class: np.ndarray
    row_split: np.ndarray
    dropped_classes: dict[str, int]  # classes under min_per_class, with their image counts
    unlabelled: int  # rows without a value in the label column

    def rows(self, split: str) -> np.ndarray:
        """The row numbers of `split`, sorted."""
        return np.flatnonzero(self.row_split == SPLITS.index(split))

    def counts(self) -> dict[str, int]:
        """Images per split."""
        return {split: int(np.sum(self.row_split == number)) for number, split in enumerate(SPLITS)}


def _stratified(rows: np.ndarray, classes: np.ndarray, share: float, generator: np.random.Generator) -> np.ndarray:
    """A seeded `share` of each class's `rows` (at least one where share > 0 and the class has two or more)."""
    chosen = []
    for label in np.unique(classes):
        members = generator.permutation(rows[classes == label])
        count = round(len(members) * share)
        if share > 0 and count == 0 and len(members) > 1:
            count = 1
        chosen.append(members[:count])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def plan(filesystem: pafs.FileSystem, folder: str, index: dict, dataset: ImageFolderConfig, seed: int) -> Plan:
    """Classes and splits of the shards in `folder` for the `dataset` config; ValueError in one line for a
    missing column, no class left, or a class without a training image."""
    label = dataset.label
    columns = index["metadata_columns"]
    if label not in columns:
        raise ValueError(f"dataset.label={label}: no such column; the data's columns: {', '.join(columns)}")
    has_split = "split" in columns
    table = shards.read_columns(filesystem, folder, index, [label] + (["split"] if has_split else []))
    labels = np.array(table.column(label).to_pylist(), dtype=object)
    labelled = np.array([value is not None and value != "" for value in labels])
    names, counts = np.unique(labels[labelled].astype(str), return_counts=True)
    kept = counts >= dataset.min_per_class
    dropped = {str(name): int(count) for name, count in zip(names[~kept], counts[~kept], strict=True)}
    class_names = tuple(str(name) for name in names[kept])
    if not class_names:
        raise ValueError(
            f"dataset.label={label}: no class has dataset.min_per_class={dataset.min_per_class} images "
            f"(the largest has {counts.max() if len(counts) else 0})"
        )
    number = {name: position for position, name in enumerate(class_names)}
    row_class = np.array([number.get(value, -1) if used else -1 for value, used in zip(labels, labelled, strict=True)])
    used = np.flatnonzero(row_class >= 0)
    row_split = np.full(len(labels), -1, np.int8)
    row_split[used] = 0
    generator = np.random.default_rng(seed)
    if dataset.test_split is None and has_split:
        given = np.array(table.column("split").to_pylist(), dtype=object)[used]
        unknown = sorted({str(value) for value in given if value not in _SPLIT_VALUES})
        if unknown:
            raise ValueError(f"the split column says {', '.join(unknown)}: expected {', '.join(_SPLIT_VALUES)}")
        row_split[used] = [_SPLIT_VALUES[value] for value in given]
    else:
        share = DEFAULT_TEST_SPLIT if dataset.test_split is None else dataset.test_split
        row_split[_stratified(used, row_class[used], share, generator)] = 2
    training = np.flatnonzero(row_split == 0)
    row_split[_stratified(training, row_class[training], dataset.validation_split, generator)] = 1
    trained = np.bincount(row_class[row_split == 0], minlength=len(class_names))
    if empty := [class_names[position] for position in np.flatnonzero(trained == 0)]:
        raise ValueError(f"class {empty[0]!r} has no training image (of {len(empty)} such classes): lower "
                         "dataset.validation_split / test_split, or raise dataset.min_per_class")  # fmt: skip
    return Plan(class_names, row_class, row_split, dropped, int(np.sum(~labelled)))


def decode(data: bytes, image_size: int, channels: int) -> np.ndarray:
    """An encoded image as uint8 pixels (HWC) with `channels` (1: grayscale, 3: RGB), resized to `image_size`
    square (bilinear) where it is not that size already; the first frame of an animation."""
    with Image.open(io.BytesIO(data), formats=shards.FORMATS) as image:
        image = image.convert("L" if channels == 1 else "RGB")
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)
    return pixels[..., np.newaxis] if channels == 1 else pixels


def shuffled(items: Iterator, buffer: int, generator: np.random.Generator) -> Iterator:
    """`items` in a random order drawn from `generator`, holding at most `buffer` of them at once: each item
    read takes the place of a random one of those held, which is passed on."""
    held: list = []
    for item in items:
        if len(held) < buffer:
            held.append(item)
            continue
        position = int(generator.integers(buffer))
        yield held[position]
        held[position] = item
    yield from (held[position] for position in generator.permutation(len(held)))


@dataclass
class ShardBatches:
    """Batches of one data set's splits, streamed from its shards (the `Batches` of dataset.py)."""

    filesystem: pafs.FileSystem
    folder: str
    index: dict
    plan: Plan
    image_size: int
    channels: int
    flip: bool = False
    shift: int = 0
    shuffle_buffer: int = 10_000

    @property
    def sizes(self) -> dict[str, int]:
        """Images per split."""
        return self.plan.counts()

    def _encoded(self, rows: np.ndarray, shard_order: np.ndarray | None = None) -> Iterator[tuple[bytes, int]]:
        """The encoded images of `rows` with their class numbers, streamed from the shards a record batch at a
        time."""
        for data, numbers in shards.stream_images(self.filesystem, self.folder, self.index, rows, shard_order):
            yield from zip(data, self.plan.row_class[numbers].tolist(), strict=True)

    def _batch(self, encoded: list[tuple[bytes, int]], pool: ThreadPoolExecutor) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images and class numbers of `encoded` images, decoded in the threads of `pool`, a share each (a
        task per image would cost more than decoding a small one)."""
        shares = [encoded[start::DECODE_THREADS] for start in range(DECODE_THREADS)]
        decoded = pool.map(lambda share: [decode(data, self.image_size, self.channels) for data, _ in share], shares)
        images = [image for share in decoded for image in share]
        labels = [label for share in shares for _, label in share]
        return np.stack(images), np.array(labels)

    def train(
        self, global_batch_size: int, seed: int, epoch: int, num_workers: int, worker_index: int
    ) -> Iterator[Batch]:
        """This worker's batches of epoch `epoch`: its rows (every num_workers-th), shards in a seeded order,
        shuffled in a buffer; each worker gives steps_per_epoch batches of global_batch_size / num_workers."""
        steps = steps_per_epoch(self.sizes["train"], global_batch_size)
        per_worker = global_batch_size // num_workers
        generator = np.random.default_rng([seed, epoch, worker_index])
        rows = self.plan.rows("train")[worker_index::num_workers]
        shard_order = generator.permutation(len(self.index["shards"]))
        buffer_order = np.random.default_rng(generator.integers(2**31))
        flips, offsets = draw_augmentation(generator, (steps, per_worker), self.shift)

        def batches() -> Iterator[Batch]:
            encoded = shuffled(self._encoded(rows, shard_order), self.shuffle_buffer, buffer_order)
            with ThreadPoolExecutor(DECODE_THREADS) as pool:
                for step in range(steps):
                    images, labels = self._batch(list(itertools.islice(encoded, per_worker)), pool)
                    yield scale(augment(images, flips[step], offsets[step], self.flip, self.shift), labels)

        return prefetched(batches())

    def evaluation(self, split: str, batch_size: int, num_workers: int, worker_index: int) -> Iterator[Batch]:
        """Every num_workers-th image of `split` from worker_index on, in order: the workers' shares cover it."""

        def batches() -> Iterator[Batch]:
            encoded = self._encoded(self.plan.rows(split)[worker_index::num_workers])
            with ThreadPoolExecutor(DECODE_THREADS) as pool:
                while chunk := list(itertools.islice(encoded, batch_size)):
                    yield scale(*self._batch(chunk, pool))

        return prefetched(batches())


def _fingerprint(resolve: shards.Resolver, source: str) -> str:
    """A key that changes when the source does: the manifest's bytes, and every file below its folder (or the
    image folder) by path, size and time of change."""
    filesystem, path = resolve(source)
    digest = hashlib.sha256(source.encode())
    folder = path
    if source.lower().endswith((".csv", ".parquet")):
        with filesystem.open_input_stream(path) as stream:
            digest.update(stream.read())
        folder = path.rsplit("/", 1)[0]
    for path, size, mtime_ns in shards.list_tree(filesystem, folder):
        digest.update(f"{path}\0{size}\0{mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _shards_of(
    dataset: ImageFolderConfig, storage: StorageConfig, resolve: shards.Resolver
) -> tuple[str, dict, list[str]]:
    """(location, index, notes) of the shards a `dataset` config trains on: dataset.path itself where it holds
    shards, else shards made from the folder or manifest once, into the storage's datasets/ folder."""
    if dataset.manifest is None:
        index = shards.read_index(*resolve(dataset.path))
        if index is not None:
            return dataset.path, index, []
    source = dataset.manifest or dataset.path
    key = _fingerprint(resolve, source)
    location = open_storage(storage).uri_of(PREPARED, key)
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(locks / f"prepare-{key}.lock"):  # one preparation when several runs start on this machine
        index = shards.read_index(*resolve(location))
        notes = []
        if index is None:
            if dataset.manifest:
                table = shards.read_manifest(resolve, source, dataset.allow_outside_paths)
            else:
                table = shards.scan_folder(resolve, source)
            shards.prepare(resolve, table, location, SHARD_BYTES)
            index = shards.read_index(*resolve(location))
            notes.append(f"prepared {index['images']:,} images of {source} as Parquet shards in {location}")
    if index["skipped"]:
        notes.append(f"skipped {index['skipped']} unreadable image(s) of {index['images'] + index['skipped']:,}, "
                     f"e.g. {', '.join(index['skipped_examples'][:3])}")  # fmt: skip
    return location, index, notes


def describe(dataset: ImageFolderConfig, storage: StorageConfig, seed: int) -> DataSet:
    """The driver's check of a `dataset` config: its shards (made first from a folder or manifest), classes and
    splits; ValueError or OSError in one line where it cannot be trained on."""
    resolve = resolver(storage)
    location, index, notes = _shards_of(dataset, storage, resolve)
    split = plan(*resolve(location), index, dataset, seed)
    if split.dropped_classes:
        dropped = ", ".join(f"{name} ({count})" for name, count in split.dropped_classes.items())
        notes.append(f"dropped {len(split.dropped_classes)} class(es) with fewer than dataset.min_per_class="
                     f"{dataset.min_per_class} images: {dropped}")  # fmt: skip
    if split.unlabelled:
        notes.append(f"left out {split.unlabelled} image(s) without a {dataset.label} value")
    input_shape = (dataset.image_size, dataset.image_size, dataset.channels)
    md5s = {shard["file"]: shard["md5"] for shard in index["shards"]}
    # Workers read only the shards: a raw folder or manifest need be on the driver alone, and shards prepared
    # into the storage are checked with it. Shards given as dataset.path must be on every node.
    shared = location if location == dataset.path else None
    return DataSet(input_shape, split.class_names, location, md5s, split.counts(), tuple(notes), shared)


def batches(dataset: ImageFolderConfig, data: DataSet, storage: StorageConfig, seed: int) -> ShardBatches:
    """A worker's batches of the data set the driver described as `data`."""
    filesystem, folder = resolver(storage)(data.location)
    index = shards.read_index(filesystem, folder)
    if index is None:
        raise FileNotFoundError(f"{data.location} holds no {shards.INDEX_FILE}: the prepared data set is gone")
    return ShardBatches(
        filesystem, folder, index, plan(filesystem, folder, index, dataset, seed), dataset.image_size,
        dataset.channels, dataset.flip, dataset.shift, dataset.shuffle_buffer,
    )  # fmt: skip
