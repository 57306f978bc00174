"""Storage outages without Ray: the retrying filesystem, final statuses that must not be lost, the heartbeat.

The S3 server is real (SeaweedFS); outages come from an OutageProxy in front of it, started by an event (a
request for a given file) or at once, and ended on a timer or by the test.
"""

import io
import json
import os
import threading
import time

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from dltrain.job import StorageConfig
from dltrain.retrying_fs import StorageUnavailable, unavailable_in
from dltrain.runs import RunStore, StatusPending, pending_dir
from dltrain.storage import open_storage

from helpers.s3server import create_bucket


@pytest.fixture
def s3_storage(s3_session_server, s3_outages, monkeypatch, tmp_path):
    """A factory of storages on a fresh bucket, reached through the outage proxy, with a cache of their own."""
    for name, value in s3_session_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DLTRAIN_CACHE", str(tmp_path / "cache"))
    bucket = create_bucket(s3_session_server)

    def storage(retry_seconds: float):
        return open_storage(
            StorageConfig(uri=f"s3://{bucket}/runs", endpoint_url=s3_outages.endpoint_url, retry_seconds=retry_seconds)
        )

    return storage


def test_files_are_written_and_read_whole_through_outages(s3_storage, s3_outages, tmp_path):
    storage = s3_storage(retry_seconds=60)
    source = tmp_path / "folder"
    (source / "sub").mkdir(parents=True)
    files = {f"sub/part-{i}": os.urandom(3_000_000 + i) for i in range(12)}
    for name, data in files.items():
        (source / name).write_bytes(data)

    # Threaded, as Ray copies checkpoints: an outage begins while the 6th file is uploaded.
    upload = s3_outages.arm(r"/sub/part-5(\?|$)", 4)
    pafs.copy_files(str(source), storage.join("folder"), destination_filesystem=storage.filesystem, use_threads=True)
    assert upload.over.is_set()
    download = s3_outages.arm(r"/sub/part-7(\?|$)", 3)
    pafs.copy_files(storage.join("folder"), str(tmp_path / "back"), source_filesystem=storage.filesystem)
    assert download.over.is_set()
    assert {name: (tmp_path / "back" / name).read_bytes() for name in files} == files

    table = pa.table({"epoch": list(range(1, 1001))})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write = s3_outages.arm(r"/history\.parquet(\?|$)", 3)  # the move of the written file into place
    storage.write_bytes(storage.join("history.parquet"), buffer.getvalue())
    read = s3_outages.arm(r"/history\.parquet(\?|$)", 3)  # pyarrow's ranged reads of the parquet footer and data
    assert pq.read_table(storage.join("history.parquet"), filesystem=storage.filesystem).equals(table)
    assert write.over.is_set() and read.over.is_set()
    assert not [info for info in storage.filesystem.get_file_info(pafs.FileSelector(storage.root, recursive=True))
                if info.base_name.endswith(".partial")]  # fmt: skip


def test_mistakes_are_not_retried(s3_storage, s3_session_server, s3_outages, monkeypatch):
    storage = s3_storage(retry_seconds=60)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join("no-such-file"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(OSError, match=r"ACCESS_DENIED|SIGNATURE|403") as denied:
        s3_storage(retry_seconds=60).write_bytes(storage.join("file"), b"data")
    assert not isinstance(denied.value, StorageUnavailable)
    # Each asked once, where a retry would ask again through the 60 s window.
    assert s3_outages.requests_for("/no-such-file$") == [f"HEAD /{storage.root}/no-such-file"]
    assert s3_outages.requests and len(set(s3_outages.requests)) == len(s3_outages.requests)


def test_an_outage_past_the_window_fails_in_one_line_naming_the_store_and_the_file(s3_storage, s3_outages):
    storage = s3_storage(retry_seconds=2)
    outage = s3_outages.down_now(None)
    try:
        with pytest.raises(StorageUnavailable) as error:
            storage.write_bytes(storage.join("run", "file.json"), b"{}")
    finally:
        s3_outages.end(outage)
    message = str(error.value)
    assert message.startswith(f"S3 at {s3_outages.endpoint_url}: could not connect for 2 s (storage.retry_seconds) ")
    assert "/runs/run" in message and "\n" not in message
    # Ray hands a worker's or the controller's error on as text; the outage is still found in it.
    wrapped = RuntimeError(f"Training failed:\nTraceback ...\ndltrain.retrying_fs.StorageUnavailable: {message}")
    assert str(unavailable_in(wrapped)) == message
    assert unavailable_in(RuntimeError("worker 0: ValueError: bad")) is None


def test_a_final_status_waits_out_an_outage(s3_storage, s3_outages):
    storage = s3_storage(retry_seconds=30)
    run = RunStore(storage).create({"trainer": {}}, {})
    run.set_status("RUNNING")
    outage = s3_outages.down_now(3)
    run.set_status("FAILED", "the worker died")
    assert outage.over.is_set()  # the write went through only once the outage was over
    assert (run.status()["status"], run.status()["error"]) == ("FAILED", "the worker died")


def test_a_final_status_the_storage_never_took_is_kept_here_and_written_later(s3_storage, s3_outages):
    storage = s3_storage(retry_seconds=0.5)
    store = RunStore(storage)
    failed, completed = store.create({}, {}), store.create({}, {})
    failed.set_status("RUNNING")
    completed.set_status("RUNNING")
    outage = s3_outages.down_now(None)
    try:
        with pytest.raises(StatusPending) as pending:
            failed.set_status("FAILED", "S3 went away")
        with pytest.raises(StatusPending):
            completed.set_status("STOPPED", "interrupted by the user")
    finally:
        s3_outages.end(outage)
    kept = pending_dir(storage) / f"{failed.id}.json"
    assert str(kept) in str(pending.value) and "\n" not in str(pending.value)
    assert f"run {failed.id} is FAILED but S3 at {s3_outages.endpoint_url}: could not connect" in str(pending.value)
    assert json.loads(kept.read_text())["status"] == "FAILED"
    assert failed.status()["status"] == "RUNNING"  # until a command opens this storage again

    completed.set_status("COMPLETED")  # resumed and finished elsewhere since: newer than the kept STOPPED
    RunStore(storage).write_pending()
    assert (failed.status()["status"], failed.status()["error"]) == ("FAILED", "S3 went away")
    assert completed.status()["status"] == "COMPLETED"  # a kept status never overwrites a newer one
    assert not list(pending_dir(storage).iterdir())


def test_the_heartbeat_beats_while_running_and_never_after_the_end(tmp_path):
    run = RunStore(open_storage(StorageConfig(uri=str(tmp_path)))).create({}, {})
    run.set_status("RUNNING")
    first = run.status()["heartbeat"]
    with run.heartbeat(seconds=0.2):
        deadline = time.monotonic() + 30
        while run.status()["heartbeat"] == first:
            assert time.monotonic() < deadline, "the heartbeat was not refreshed"
            time.sleep(0.05)
        run.set_status("COMPLETED")
        ended = run.status()
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("dltrain-heartbeat")]
    assert run.status() == ended and ended["status"] == "COMPLETED"
