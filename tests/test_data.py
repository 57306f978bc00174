"""IDX parsing, md5 verification, download from a mirror, seeded splits and per-worker batches."""

import gzip
import http.server
import shutil
import threading
from functools import partial

import numpy as np
import pytest

from dltrain.data import describe, fashion_mnist
from dltrain.data.idx import IdxError, read_idx, verify_md5
from dltrain.data.pipeline import Split, eval_batches, train_batches, train_validation_split
from dltrain.job import FashionMnistConfig, StorageConfig


def _write_idx(path, array: np.ndarray, type_code: int = 0x08) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(array.dtype.newbyteorder(">")).tobytes())


def test_read_idx_round_trips_shapes_and_types(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), images)
    floats = np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)
    _write_idx(tmp_path / "b.gz", floats, type_code=0x0D)
    np.testing.assert_array_equal(read_idx(tmp_path / "b.gz"), floats)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "text.gz").write_bytes(gzip.compress(b"hello world"))
    with pytest.raises(IdxError, match="bad magic number"):
        read_idx(tmp_path / "text.gz")
    _write_idx(tmp_path / "short.gz", np.zeros((4, 2), np.uint8))
    data = gzip.decompress((tmp_path / "short.gz").read_bytes())
    (tmp_path / "short.gz").write_bytes(gzip.compress(data[:-3]))
    with pytest.raises(IdxError, match="promises"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "notgz.gz").write_bytes(b"not gzip at all")
    with pytest.raises(IdxError, match="cannot be read"):
        read_idx(tmp_path / "notgz.gz")


def test_real_files_parse_with_published_checksums(real_data):
    (images, labels), (test_images, test_labels) = fashion_mnist.load(fashion_mnist.prepare(str(real_data), ""))
    assert images.shape == (60000, 28, 28, 1) and images.dtype == np.uint8
    assert test_images.shape == (10000, 28, 28, 1)
    assert np.bincount(labels).tolist() == [6000] * 10  # Fashion-MNIST is balanced
    assert np.bincount(test_labels).tolist() == [1000] * 10


def test_corrupted_file_is_rejected_naming_it(real_data, tmp_path):
    for name, _ in fashion_mnist.FILES.values():
        shutil.copy(real_data / name, tmp_path / name)
    target = tmp_path / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(IdxError, match=r"t10k-labels-idx1-ubyte.gz is corrupted: md5 \w+, expected bb300cfd"):
        fashion_mnist.prepare(str(tmp_path), "")


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"lacks train-images-idx3-ubyte\.gz"):
        fashion_mnist.prepare(str(tmp_path), "")


@pytest.fixture
def mirror(tmp_path):
    """A real HTTP server on 127.0.0.1 serving a folder, standing in for the official mirror."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_missing_files_are_downloaded_and_verified(real_data, mirror, tmp_path, monkeypatch):
    folder, url = mirror
    for name, _ in fashion_mnist.FILES.values():
        shutil.copy(real_data / name, folder / name)
    cache = tmp_path / "cache"
    monkeypatch.setenv("DLTRAIN_DATA_DIR", str(cache))
    assert fashion_mnist.prepare(None, url, locks=tmp_path / "locks") == cache
    for name, md5 in fashion_mnist.FILES.values():
        verify_md5(cache / name, md5)
    assert sorted(path.name for path in cache.iterdir()) == sorted(name for name, _ in fashion_mnist.FILES.values())
    assert len(list((tmp_path / "locks").iterdir())) == 1  # the download's lock, in dltrain's cache


def test_a_complete_data_folder_is_only_read(real_data, tmp_path, monkeypatch):
    """$DLTRAIN_DATA_DIR may be a read-only volume: with its files there, nothing is written into it."""
    folder = tmp_path / "volume"
    folder.mkdir()
    for name, _ in fashion_mnist.FILES.values():
        shutil.copy(real_data / name, folder / name)
    before = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    monkeypatch.setenv("DLTRAIN_DATA_DIR", str(folder))
    monkeypatch.setenv("DLTRAIN_CACHE", str(tmp_path / "cache"))
    dataset = FashionMnistConfig(name="fashion_mnist", path=None, mirror="http://127.0.0.1:9/", classes=None,
                                 per_class=None, limit=1000, validation_split=0.1, flip=False, shift=0)  # fmt: skip
    data = describe(dataset, StorageConfig(uri=None), seed=0)
    assert data.location == str(folder)
    assert data.shared_path is None  # no dataset.path: each node of a cluster finds (or downloads) its own files
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == before
    assert not (tmp_path / "cache").exists()  # no download, so no lock either


def test_download_of_a_corrupted_file_fails(real_data, mirror, tmp_path, monkeypatch):
    folder, url = mirror
    for name, _ in fashion_mnist.FILES.values():
        shutil.copy(real_data / name, folder / name)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    monkeypatch.setenv("DLTRAIN_DATA_DIR", str(tmp_path / "cache"))
    with pytest.raises(IdxError, match=r"downloading http://127.0.0.1:\d+/t10k-labels-idx1-ubyte.gz failed"):
        fashion_mnist.prepare(None, url, locks=tmp_path / "locks")


def _toy(n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(n, dtype=np.int64).reshape(n, 1, 1, 1).astype(np.uint8), np.arange(n) % 10


def test_split_is_seeded_disjoint_and_limited():
    images = np.arange(1000).reshape(1000, 1, 1, 1)
    labels = np.arange(1000)
    train, validation = train_validation_split(images, labels, 0.1, seed=7)
    again, _ = train_validation_split(images, labels, 0.1, seed=7)
    other, _ = train_validation_split(images, labels, 0.1, seed=8)
    assert (len(train.labels), len(validation.labels)) == (900, 100)
    assert set(train.labels).isdisjoint(validation.labels)
    np.testing.assert_array_equal(train.labels, again.labels)
    assert not np.array_equal(train.labels, other.labels)
    small_train, small_validation = train_validation_split(images, labels, 0.25, seed=7, limit=200)
    assert set(small_train.labels) | set(small_validation.labels) == set(range(200))


def _batches(data: Split, **kwargs) -> list[tuple[np.ndarray, np.ndarray]]:
    arguments = {"global_batch_size": 64, "seed": 1, "epoch": 3, "num_workers": 1, "worker_index": 0} | kwargs
    return list(train_batches(data, **arguments))


@pytest.mark.parametrize("augment", [{}, {"flip": True, "shift": 2}])
def test_worker_slices_make_up_the_single_worker_batches(augment):
    images = np.random.default_rng(0).integers(0, 256, (1000, 6, 6, 1), dtype=np.uint8)
    data = Split(images, np.arange(1000))
    single = _batches(data, **augment)
    shards = [_batches(data, num_workers=4, worker_index=w, **augment) for w in range(4)]
    assert len(single) == 1000 // 64 and all(len(labels) == 64 for _, labels in single)
    for step, (batch_images, batch_labels) in enumerate(single):
        np.testing.assert_array_equal(np.concatenate([shard[step][1] for shard in shards]), batch_labels)
        np.testing.assert_array_equal(np.concatenate([shard[step][0] for shard in shards]), batch_images)
    next_epoch = _batches(data, epoch=4, **augment)
    assert not np.array_equal(single[0][1], next_epoch[0][1])  # reshuffled every epoch


def _one_dot_each(n: int = 512, size: int = 12) -> Split:
    """Images that are black but for one white pixel somewhere inside a 4-pixel margin; label = image index."""
    rows, columns = np.random.default_rng(5).integers(4, size - 4, (2, n))
    images = np.zeros((n, size, size, 1), np.uint8)
    images[np.arange(n), rows, columns, 0] = 255
    return Split(images, np.arange(n))


def _by_label(batches: list[tuple[np.ndarray, np.ndarray]]) -> dict[int, np.ndarray]:
    return {int(label): image for images, labels in batches for image, label in zip(images, labels, strict=True)}


def test_augmentation_is_seeded_and_changes_every_epoch():
    data = _one_dot_each()
    first = _batches(data, flip=True, shift=2)
    for (images, labels), (again, again_labels) in zip(first, _batches(data, flip=True, shift=2), strict=True):
        np.testing.assert_array_equal(images, again)
        np.testing.assert_array_equal(labels, again_labels)
    # The shuffle is the same with and without augmentation: only the images change.
    plain = _batches(data)
    assert all(
        np.array_equal(labels, plain_labels) for (_, labels), (_, plain_labels) in zip(first, plain, strict=True)
    )
    assert not all(
        np.array_equal(images, plain_images) for (images, _), (plain_images, _) in zip(first, plain, strict=True)
    )
    # Another epoch draws other flips and shifts for the same images (labels are image indices here).
    this_epoch, next_epoch = _by_label(first), _by_label(_batches(data, flip=True, shift=2, epoch=4))
    common = this_epoch.keys() & next_epoch.keys()
    assert sum(not np.array_equal(this_epoch[label], next_epoch[label]) for label in common) > len(common) / 2


def test_flip_mirrors_about_half_of_the_images_and_leaves_labels_alone():
    data = _one_dot_each()
    batches = _batches(data, flip=True)
    assert all(images.dtype == np.float32 and images.shape == (64, 12, 12, 1) for images, _ in batches)
    flipped = 0
    for label, image in _by_label(batches).items():  # labels are image indices: each image is still its own
        original = data.images[label] / 255.0
        assert np.array_equal(image, original) or np.array_equal(image, original[:, ::-1])
        flipped += not np.array_equal(image, original)
    assert 0.4 < flipped / len(_by_label(batches)) < 0.6


def test_shift_moves_each_image_by_at_most_shift_pixels():
    data = _one_dot_each()
    moves = []
    for images, labels in _batches(data, shift=2):
        assert images.shape == (64, 12, 12, 1) and images.min() >= 0.0 and images.max() <= 1.0
        for image, label in zip(images, labels, strict=True):
            assert image.sum() == 1.0  # the dot stays whole and inside: only moved
            moves.append(np.argwhere(image[..., 0] == 1.0)[0] - np.argwhere(data.images[label, ..., 0])[0])
    assert {tuple(move) for move in moves} == {(rows, columns) for rows in range(-2, 3) for columns in range(-2, 3)}


def test_shift_fills_the_uncovered_border_with_black():
    white = Split(np.full((128, 8, 8, 1), 255, np.uint8), np.zeros(128, np.int64))
    images = np.concatenate([images for images, _ in _batches(white, shift=3)])
    blackened = (images == 0).reshape(len(images), -1).sum(axis=1)
    assert blackened.max() > 0 and set(np.unique(images)) <= {0.0, 1.0}


def test_negative_shift_is_rejected():
    with pytest.raises(ValueError, match="shift must be >= 0"):
        _batches(_one_dot_each(), shift=-1)


def test_train_images_are_scaled_to_unit_range():
    images, labels = _toy(256)
    batch, _ = next(iter(train_batches(Split(images, labels), 128, seed=0, epoch=0, num_workers=1, worker_index=0)))
    assert batch.dtype.name == "float32"
    assert float(batch.min()) >= 0.0 and float(batch.max()) <= 1.0


def test_eval_shards_cover_every_sample_once():
    images, _ = _toy(1001)
    seen = [
        labels_batch
        for w in range(3)
        for images_batch, labels_batch in eval_batches(Split(images, np.arange(1001)), 50, 3, w)
    ]
    assert sorted(np.concatenate(seen).tolist()) == list(range(1001))


@pytest.mark.parametrize(
    "keys", [{}, {"classes": [5, 6, 7, 8, 9], "per_class": 100}, {"classes": [3, 1], "limit": 5000}]
)
def test_the_driver_counts_the_splits_the_workers_train_on(real_data, keys):
    """describe counts the splits from the label files alone; they are the sizes of the workers' image splits."""
    dataset = FashionMnistConfig(**{"name": "fashion_mnist", "path": str(real_data), "mirror": "http://127.0.0.1:9/",
                                    "classes": None, "per_class": None, "limit": None, "validation_split": 0.1,
                                    "flip": False, "shift": 0} | keys)  # fmt: skip
    data = describe(dataset, StorageConfig(uri=None), seed=7)
    assert data.sizes == fashion_mnist.splits(real_data, dataset, seed=7).sizes
    assert data.shared_path == str(real_data)  # a local dataset.path: every node of a cluster must have it
