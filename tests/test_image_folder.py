"""The user's own images (dataset=image_folder): a class folder and a metadata table made from real Fashion-MNIST
images (PNG and JPEG, with corrupt files), prepared as Parquet shards locally and on S3 (SeaweedFS), streamed to
each worker, and trained on 2 Ray Train workers with a keras.applications backbone."""

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dltrain import config
from dltrain.data import describe, image_folder, shards
from dltrain.errors import DltrainError
from dltrain.job import ImageFolderConfig, StorageConfig
from dltrain.runs import RunStore
from dltrain.serving.source import locate
from dltrain.storage import open_storage, resolver

from helpers.config import compose_config, resolved
from helpers.image_sources import DECOYS, PER_CLASS, ImageSources, make_image_sources

DLTRAIN = str(Path(sys.executable).parent / "dltrain")


@pytest.fixture(scope="module")
def sources(real_data, tmp_path_factory) -> ImageSources:
    return make_image_sources(real_data, tmp_path_factory.mktemp("images"))


def _dataset(**keys) -> ImageFolderConfig:
    """An image_folder config, as conf/dataset/image_folder.yaml gives it, with `keys` changed."""
    defaults = resolved("dataset=image_folder", "dataset.path=/x").dataset
    return replace(defaults, **{"path": None, "image_size": 28, "channels": 1} | keys)


def _local(tmp_path: Path) -> StorageConfig:
    return StorageConfig(uri=str(tmp_path / "store"), retry_seconds=5)


def test_a_class_folder_becomes_parquet_shards_without_its_corrupt_files(sources, tmp_path):
    resolve = resolver(StorageConfig(uri=None))
    table = shards.scan_folder(resolve, str(sources.folder))
    prepared = shards.prepare(resolve, table, str(tmp_path / "shards"), shard_bytes=8_000)
    assert (prepared.images, prepared.skipped) == (sources.images, sources.corrupt)
    assert sorted(Path(path).name for path in prepared.skipped_examples) == ["broken-1.png", "broken-2.jpg",
                                                                             "truncated.png"]  # fmt: skip
    index = shards.read_index(*resolve(str(tmp_path / "shards")))
    assert prepared.shards == len(index["shards"]) > 1 and index["metadata_columns"] == ["class"]
    for shard in index["shards"]:  # the manifest's md5s are the files'
        assert shard["md5"] == hashlib.md5((tmp_path / "shards" / shard["file"]).read_bytes()).hexdigest()
    stored = shards.read_columns(*resolve(str(tmp_path / "shards")), index, ["path", "class"])
    assert stored.num_rows == sources.images == sum(shard["rows"] for shard in index["shards"])
    assert {Path(path).suffix for path in stored.column("path").to_pylist()} == {".png", ".jpg"}
    assert sorted(set(stored.column("class").to_pylist())) == list(sources.garments)
    # Trained on as dataset.path, these local shards are what every node of a cluster must see.
    data = describe(_dataset(path=str(tmp_path / "shards")), _local(tmp_path), seed=1)
    assert data.location == data.shared_path == str(tmp_path / "shards")
    assert not (tmp_path / "store").exists()  # used as they are: nothing prepared


def test_a_manifest_is_labelled_by_the_column_chosen(sources, tmp_path):
    data = describe(_dataset(manifest=str(sources.manifest), label="garment"), _local(tmp_path), seed=1)
    assert data.class_names == sources.garments
    assert data.input_shape == (28, 28, 1)
    test_rows = len(sources.garments) * PER_CLASS // 8  # the split column marks every 8th image of a class test
    assert data.sizes["test"] == test_rows
    assert data.sizes["validation"] == round((PER_CLASS - PER_CLASS // 8) * 0.1) * len(sources.garments)
    assert sum(data.sizes.values()) == sources.images
    assert any("skipped 3 unreadable image(s)" in note and "broken-1.png" in note for note in data.notes)
    assert data.location.startswith(str(tmp_path / "store" / "datasets"))
    assert data.shared_path is None  # the workers read the shards from the storage, not the driver's manifest
    # The decoy column labels the same images otherwise; the shards made for the first call are reused.
    decoy = describe(_dataset(manifest=str(sources.manifest), label="gallery"), _local(tmp_path), seed=1)
    assert decoy.class_names == tuple(sorted(DECOYS)) and decoy.location == data.location
    assert not any(note.startswith("prepared") for note in decoy.notes)
    # A seeded, stratified test split instead of the split column.
    shares = describe(_dataset(manifest=str(sources.manifest), label="garment", test_split=0.25), _local(tmp_path), 1)
    assert shares.sizes["test"] == len(sources.garments) * PER_CLASS // 4


def _manifest_variant(sources: ImageSources, folder: Path, change) -> str:
    """A copy of the manifest (beside the original, so its relative paths still work) with rows changed."""
    with sources.manifest.open() as file:
        rows = list(csv.DictReader(file))
    rows = [row for row in map(change, rows) if row is not None]
    variant = sources.manifest.with_name(f"variant-{folder.name}.csv")
    with variant.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(variant)


def test_rare_classes_are_dropped_and_bad_labels_fail_in_one_line(sources, tmp_path):
    bags = iter(range(10_000))
    few_bags = _manifest_variant(sources, tmp_path, lambda row: None if row["garment"] == "Bag" and next(bags) >= 6
                                 else row)  # fmt: skip
    data = describe(_dataset(manifest=few_bags, label="garment", min_per_class=10), _local(tmp_path), seed=1)
    assert data.class_names == tuple(name for name in sources.garments if name != "Bag")
    assert any("dropped 1 class(es)" in note and "Bag (6)" in note for note in data.notes)

    failures = {
        "dataset.label=culture: no such column; the data's columns: garment, gallery, split": _dataset(
            manifest=str(sources.manifest), label="culture"),
        "no class has dataset.min_per_class=1000 images": _dataset(manifest=str(sources.manifest), min_per_class=1000,
                                                                    label="garment"),
        "class 'Trouser' has no training image": _dataset(manifest=_manifest_variant(
            sources, tmp_path / "trousers", lambda row: row | {"split": "test"} if row["garment"] == "Trouser" else row
        ), label="garment"),
    }  # fmt: skip
    for message, dataset in failures.items():
        with pytest.raises(ValueError, match=message) as error:
            describe(dataset, _local(tmp_path), seed=1)
        assert "\n" not in str(error.value)


def test_the_config_names_bad_sources_in_one_line():
    with pytest.raises(DltrainError, match=r"dataset.path=None and dataset.manifest=None: give one of them"):
        config.resolve(compose_config("dataset=image_folder"))
    with pytest.raises(DltrainError, match=r"dataset.channels=2 is invalid: expected 1 or 3"):
        config.resolve(compose_config("dataset=image_folder", "dataset.path=/x", "dataset.channels=2"))
    with pytest.raises(DltrainError, match=r"dataset.manifest='a.txt' is invalid: expected null or a .csv"):
        config.resolve(compose_config("dataset=image_folder", "dataset.manifest=a.txt"))
    with pytest.raises(DltrainError, match=r"dataset.label: unknown key"):
        config.resolve(compose_config("+dataset.label=garment"))  # a Fashion-MNIST key it does not have


def test_each_worker_streams_its_own_rows_of_every_split(sources, tmp_path):
    dataset = _dataset(manifest=str(sources.manifest), label="garment", flip=True, shift=2, shuffle_buffer=16)
    data = describe(dataset, _local(tmp_path), seed=3)
    feeds = [image_folder.batches(dataset, data, _local(tmp_path), seed=3) for _ in range(2)]
    steps = data.sizes["train"] // 32
    for epoch in (0, 1):
        for rank, feed in enumerate(feeds):
            batches = list(feed.train(32, 3, epoch, 2, rank))
            assert len(batches) == steps and all(images.shape == (16, 28, 28, 1) for images, _ in batches)
            assert all(float(images.min()) >= 0.0 and float(images.max()) <= 1.0
                       for images, _ in batches)  # fmt: skip
    plan = feeds[0].plan
    shares = [set(plan.rows("train")[rank::2]) for rank in range(2)]
    assert not shares[0] & shares[1] and len(shares[0] | shares[1]) == data.sizes["train"]
    labels = [np.concatenate([y for _, y in feed.evaluation("test", 7, 2, rank)]) for rank, feed in
              enumerate(feeds)]  # fmt: skip
    assert sum(map(len, labels)) == data.sizes["test"]
    assert sorted(np.concatenate(labels)) == sorted(plan.row_class[plan.rows("test")])


def test_links_out_of_an_image_folder_or_to_folders_are_not_followed(sources, tmp_path):
    folder, elsewhere = tmp_path / "pets", tmp_path / "elsewhere"
    trousers = sorted((sources.folder / "Trouser").glob("*.png"))
    for path in (folder / "cat", folder / "dog", elsewhere):
        path.mkdir(parents=True)
    shutil.copy(trousers[0], folder / "cat" / "a.png")
    shutil.copy(trousers[1], folder / "dog" / "b.png")
    for number, image in enumerate(trousers[2:12]):
        shutil.copy(image, elsewhere / f"{number}.png")
    (folder / "cat" / "loop").symlink_to(folder)  # cat/loop/cat/loop/...: a loop
    (folder / "dog" / "up").symlink_to("..")  # the same, relative
    (folder / "fox").symlink_to(elsewhere, target_is_directory=True)  # a class folder out of the folder
    (folder / "dog" / "stolen.png").symlink_to(elsewhere / "0.png")  # a file out of the folder
    (folder / "dog" / "twin.png").symlink_to(folder / "cat" / "a.png")  # a file in it: taken
    table = shards.scan_folder(resolver(StorageConfig(uri=None)), str(folder))
    assert table.column("path").to_pylist() == [f"{folder}/{name}" for name in ("cat/a.png", "dog/b.png",
                                                                                "dog/twin.png")]  # fmt: skip
    prepared = subprocess.run([DLTRAIN, "data", "prepare", str(folder), str(tmp_path / "shards")], capture_output=True,
                              text=True, timeout=120)  # fmt: skip
    assert prepared.returncode == 0 and prepared.stdout.startswith(f"prepared 3 images of {folder} "), prepared.stderr
    # Training's own preparation reads the same three (and its key of the folder does not walk the loop).
    data = describe(_dataset(path=str(folder), min_per_class=1), _local(tmp_path), seed=1)
    assert sum(data.sizes.values()) == 3 and data.class_names == ("cat", "dog")


def test_a_manifest_reads_only_its_own_folder_unless_allowed_to_leave_it(sources, tmp_path):
    museum = tmp_path / "museum"
    (museum / "objects").mkdir(parents=True)
    images = sorted((sources.folder / "Trouser").glob("*.png"))[:3]
    for name, image in zip(("a.png", "b.png"), images, strict=False):
        shutil.copy(image, museum / "objects" / name)
    shutil.copy(images[2], tmp_path / "secret.png")
    (museum / "objects" / "link.png").symlink_to(tmp_path / "secret.png")
    resolve = resolver(StorageConfig(uri=None))
    for outside in ("../secret.png", str(tmp_path / "secret.png"), "objects/../../secret.png", "objects/link.png",
                    "s3://another-bucket/secret.png"):  # fmt: skip
        manifest = museum / "objects.csv"
        with manifest.open("w", newline="") as file:
            csv.writer(file).writerows([["path", "kind"], ["objects/a.png", "x"], ["objects/b.png", "y"],
                                        [outside, "x"]])  # fmt: skip
        with pytest.raises(ValueError) as refused:
            shards.read_manifest(resolve, str(manifest))
        assert str(refused.value) == (
            f"manifest {manifest}: 1 path(s) lead outside its folder, e.g. {outside!r}: refused unless "
            "dataset.allow_outside_paths=true (dltrain data prepare --allow-outside-paths)"
        )
        with pytest.raises(ValueError, match="lead outside its folder"):
            describe(_dataset(manifest=str(manifest), label="kind"), _local(tmp_path), seed=1)
        allowed = shards.read_manifest(resolve, str(manifest), allow_outside=True)
        assert allowed.num_rows == 3
    command = [DLTRAIN, "data", "prepare", str(museum / "objects.csv"), str(tmp_path / "shards")]
    manifest.write_text(f"path,kind\nobjects/a.png,x\nobjects/b.png,y\n{tmp_path / 'secret.png'},x\n")
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--allow-outside-paths" in refused.stderr
    opted_in = subprocess.run([*command, "--allow-outside-paths"], capture_output=True, text=True, timeout=120)
    assert opted_in.returncode == 0 and opted_in.stdout.startswith("prepared 3 images"), opted_in.stderr
    data = describe(_dataset(manifest=str(manifest), label="kind", allow_outside_paths=True), _local(tmp_path), seed=1)
    assert sum(data.sizes.values()) == 3


@pytest.fixture(scope="module")
def s3_data(sources, s3_session_server):
    """The sources uploaded to a bucket of the session's S3 server, and `dltrain data prepare`'s run on them."""
    from helpers.s3server import create_bucket

    server = s3_session_server
    bucket = create_bucket(server)
    client = server.client()
    for path in sources.folder.parent.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"in/{path.relative_to(sources.folder.parent)}")
    env = {**server.env(), "PATH": str(Path(sys.executable).parent)}
    prepared = subprocess.run(
        [DLTRAIN, "data", "prepare", f"s3://{bucket}/in/museum/objects.csv", f"s3://{bucket}/shards", "--shard-mb",
         "0.01", "--endpoint-url", server.endpoint_url],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    storage = StorageConfig(
        uri=f"s3://{bucket}/runs", endpoint_url=server.endpoint_url, region=server.region, retry_seconds=5
    )
    return bucket, server, prepared, storage


def test_data_prepare_writes_shards_to_s3_from_an_s3_manifest(s3_data, sources, monkeypatch):
    bucket, server, prepared, _ = s3_data
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    assert f"prepared {sources.images} images of s3://{bucket}/in/museum/objects.csv into" in prepared.stdout
    assert "label columns: garment, gallery, split" in prepared.stdout
    assert "skipped 3 unreadable image(s)" in prepared.stdout and "broken-2.jpg" in prepared.stdout
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    index = json.loads(server.client().get_object(Bucket=bucket, Key="shards/shards.json")["Body"].read())
    assert len(index["shards"]) > 1 and index["images"] == sources.images
    command = [DLTRAIN, "data", "prepare", str(sources.folder), f"s3://{bucket}/shards", "--endpoint-url",
               server.endpoint_url]  # fmt: skip
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already holds a prepared data set: give a new folder" in again.stderr


def test_an_s3_manifest_is_refused_paths_into_other_folders_and_buckets(s3_data, monkeypatch):
    bucket, server, _, _ = s3_data
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    resolve = resolver(StorageConfig(uri=None, endpoint_url=server.endpoint_url))
    for outside in ("../../../other-bucket/x.png", f"s3://{bucket}/private/x.png", "/etc/passwd"):
        body = f"path,kind\nobjects/object-00001.png,x\n{outside},y\n".encode()
        server.client().put_object(Bucket=bucket, Key="in/museum/leaky.csv", Body=body)
        with pytest.raises(ValueError, match=f"1 path\\(s\\) lead outside its folder, e.g. '{outside}'"):
            shards.read_manifest(resolve, f"s3://{bucket}/in/museum/leaky.csv")


def test_a_class_folder_on_s3_is_prepared_into_the_s3_storage(s3_data, sources, monkeypatch):
    bucket, server, _, storage = s3_data
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    data = describe(_dataset(path=f"s3://{bucket}/in/by_garment"), storage, seed=1)
    assert data.class_names == sources.garments and sum(data.sizes.values()) == sources.images
    assert data.location.startswith(f"s3://{bucket}/runs/datasets/")
    assert any("skipped 3 unreadable image(s)" in note for note in data.notes)


@pytest.mark.slow
def test_two_workers_train_a_backbone_on_s3_shards_labelled_on_the_command_line(
    s3_data, sources, worker_env, monkeypatch
):
    """Done when: an independent metadata table, labelled by a column chosen on the command line, trains on 2
    workers with a backbone, and the run's class names reach its plots and its served model."""
    bucket, server, prepared, storage = s3_data
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    trained = subprocess.run(
        [sys.executable, "-m", "dltrain", "dataset=image_folder", f"dataset.path=s3://{bucket}/shards",
         "dataset.label=garment", "dataset.image_size=32", "dataset.channels=1", "model=backbone",
         "model.name=mobilenet_v2", "resources=medium", "resources.use_gpu=false", "trainer.epochs=2",
         "trainer.batch_size=32", "trainer.progress=epochs", "storage=s3", f"storage.uri={storage.uri}",
         f"storage.endpoint_url={server.endpoint_url}"],
        capture_output=True, text=True, timeout=900, env=worker_env | server.env(),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert "2 worker(s)" in trained.stdout
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    store = RunStore(open_storage(storage))
    (run,) = store.list()
    assert run.status()["status"] == "COMPLETED"
    assert run.confusion_matrix()["class_names"] == list(sources.garments)
    assert list(run.summary()["test_accuracy_per_class"]) == list(sources.garments)  # what the plot's rows show
    assert run.storage.exists(f"{run.path}/plots/confusion_matrix.png")
    index = json.loads(server.client().get_object(Bucket=bucket, Key="shards/shards.json")["Body"].read())
    assert run.provenance()["data_md5"] == {shard["file"]: shard["md5"] for shard in index["shards"]}
    assert locate(run.storage, run.id).class_names == list(sources.garments)
    logs = [name for name in run.storage.list_files(f"{run.path}/logs") if name.startswith("worker-")]
    assert len(logs) == 2
