"""IDX parsing, md5 verification, download from a mirror, seeded splits and per-worker batches."""

import gzip
import http.server
import shutil
import threading
from functools import partial

import numpy as np
import pytest

from dltrain.data import fashion_mnist
from dltrain.data.idx import IdxError, read_idx, verify_md5
from dltrain.data.pipeline import Split, eval_batches, train_batches, train_validation_split


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
    assert fashion_mnist.prepare(None, url) == cache
    for name, md5 in fashion_mnist.FILES.values():
        verify_md5(cache / name, md5)


def test_download_of_a_corrupted_file_fails(real_data, mirror, tmp_path, monkeypatch):
    folder, url = mirror
    for name, _ in fashion_mnist.FILES.values():
        shutil.copy(real_data / name, folder / name)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    monkeypatch.setenv("DLTRAIN_DATA_DIR", str(tmp_path / "cache"))
    with pytest.raises(IdxError, match=r"downloading http://127.0.0.1:\d+/t10k-labels-idx1-ubyte.gz failed"):
        fashion_mnist.prepare(None, url)


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


def test_worker_slices_make_up_the_single_worker_batches():
    data = Split(np.arange(1000).reshape(1000, 1, 1, 1), np.arange(1000))
    single = [labels.numpy() for _, labels in train_batches(data, 64, seed=1, epoch=3, num_workers=1, worker_index=0)]
    shards = [
        [labels.numpy() for _, labels in train_batches(data, 64, seed=1, epoch=3, num_workers=4, worker_index=w)]
        for w in range(4)
    ]
    assert len(single) == 1000 // 64 and all(len(batch) == 64 for batch in single)
    for step, batch in enumerate(single):
        np.testing.assert_array_equal(np.concatenate([shard[step] for shard in shards]), batch)
    next_epoch = [
        labels.numpy() for _, labels in train_batches(data, 64, seed=1, epoch=4, num_workers=1, worker_index=0)
    ]
    assert not np.array_equal(single[0], next_epoch[0])  # reshuffled every epoch


def test_train_images_are_scaled_to_unit_range():
    images, labels = _toy(256)
    batch, _ = next(iter(train_batches(Split(images, labels), 128, seed=0, epoch=0, num_workers=1, worker_index=0)))
    assert batch.dtype.name == "float32"
    assert float(batch.numpy().min()) >= 0.0 and float(batch.numpy().max()) <= 1.0


def test_eval_shards_cover_every_sample_once():
    images, _ = _toy(1001)
    seen = [
        labels_batch.numpy()
        for w in range(3)
        for images_batch, labels_batch in eval_batches(Split(images, np.arange(1001)), 50, 3, w)
    ]
    assert sorted(np.concatenate(seen).tolist()) == list(range(1001))
