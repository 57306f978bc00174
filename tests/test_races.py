"""Nothing lost under concurrency: registrations, deletions and alias moves in the model registry, and resumes and
deletions of runs, made by real processes released together by a barrier, on local storage and on SeaweedFS."""

import dataclasses
import json
import multiprocessing
import queue
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow.fs
import pytest

from dltrain.job import StorageConfig
from dltrain.registry import READY, REGISTERING, Registry
from dltrain.runs import RunStore
from dltrain.storage import Storage, open_storage

from helpers.s3server import create_bucket

DLTRAIN = str(Path(sys.executable).parent / "dltrain")
ROUNDS = 4  # races of each kind; each round races the same actions again, in fresh state
CLAIM_WAIT_S = 120


def _dltrain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DLTRAIN, *args], capture_output=True, text=True, timeout=300)


# What a racer can be told to do: module-level functions of (storage, *args), importable by spawned processes.
def _register(storage: Storage, run_id: str, name: str) -> int:
    return Registry(storage).register(RunStore(storage).get(run_id), name, {})["version"]


def _delete_once_claimed(storage: Storage, name: str, version: int, force: bool) -> str:
    """Delete version `version` as soon as a registration has claimed it (its record exists): mid-registration."""
    record, deadline = storage.join("models", name, str(version), "version.json"), time.monotonic() + CLAIM_WAIT_S
    while not storage.exists(record):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}:{version} was never claimed")
    Registry(storage).delete(name, version, force)
    return "deleted"


def _alias(storage: Storage, name: str, version: int, alias: str) -> int | None:
    return Registry(storage).set_alias(name, version, alias)


def _delete(storage: Storage, name: str, version: int) -> str:
    Registry(storage).delete(name, version)
    return "deleted"


def _claim(storage: Storage, run_id: str) -> str:
    RunStore(storage).get(run_id).claim()
    return "claimed"


def _mark_deleting(storage: Storage, run_id: str) -> str:
    RunStore(storage).get(run_id).mark_deleting(force=False)
    return "marked"


_ACTIONS = {function.__name__: function for function in (_register, _delete_once_claimed, _alias, _delete, _claim,
                                                          _mark_deleting)}  # fmt: skip


def _take_orders(storage_config: StorageConfig, barrier: Any, orders: Any, results: Any) -> None:
    """One racer: for each order, wait for every racer at the barrier, then act; report (succeeded, value)."""
    storage = open_storage(storage_config)
    while (order := orders.get()) is not None:
        action, args = order
        barrier.wait(timeout=CLAIM_WAIT_S)
        try:
            results.put((True, _ACTIONS[action](storage, *args)))
        except Exception as error:
            results.put((False, str(error)))


class Racers:
    """Processes that each carry out one order per round, all released together by a barrier."""

    def __init__(self, count: int, storage_config: StorageConfig):
        context = multiprocessing.get_context("spawn")
        self.barrier = context.Barrier(count)  # kept: the racers unpickle it after this returns
        self.orders = [context.Queue() for _ in range(count)]
        self.results = [context.Queue() for _ in range(count)]
        self.processes = [
            context.Process(target=_take_orders, args=(storage_config, self.barrier, orders, results), daemon=True)
            for orders, results in zip(self.orders, self.results, strict=True)
        ]
        for process in self.processes:
            process.start()

    def race(self, *orders: tuple[str, tuple]) -> list[tuple[bool, Any]]:
        """Each racer's (succeeded, value or error message) for its order, given in racer order."""
        for inbox, order in zip(self.orders, orders, strict=True):
            inbox.put(order)
        return [self.result(index) for index in range(len(orders))]

    def result(self, index: int) -> tuple[bool, Any]:
        """Racer `index`'s next report; fails at once if it died."""
        while True:
            try:
                return self.results[index].get(timeout=1)
            except queue.Empty:
                process = self.processes[index]
                assert process.is_alive(), f"racer {index} died (exit code {process.exitcode})"

    def close(self) -> None:
        for inbox in self.orders:
            inbox.put(None)
        for process in self.processes:
            process.join(timeout=60)
            assert process.exitcode == 0


@pytest.fixture(params=["local", "s3"])
def storage_config(request, tmp_path, monkeypatch) -> StorageConfig:
    """A storage of this test's own: a local folder, or a fresh bucket on the session's SeaweedFS."""
    if request.param == "local":
        return StorageConfig(uri=str(tmp_path / "runs"))
    server = request.getfixturevalue("s3_session_server")
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)  # the racers, spawned, inherit the credentials
    return StorageConfig(uri=f"s3://{create_bucket(server)}/runs", endpoint_url=server.endpoint_url)


def _copy_run(run_folder: Path, storage: Storage) -> str:
    """A copy of a real run's folder in `storage`; returns its id."""
    if storage.uri.startswith("s3://"):
        pyarrow.fs.copy_files(str(run_folder), storage.join(run_folder.name), destination_filesystem=storage.filesystem)
    else:
        shutil.copytree(run_folder, storage.join(run_folder.name))
    return run_folder.name


def _version_files(storage: Storage, name: str, version: int) -> set[str]:
    return set(storage.list_files(storage.join("models", name, str(version))))


@pytest.mark.slow
def test_a_deletion_racing_a_registration_never_leaves_a_ready_version_without_its_files(completed_run, storage_config):
    storage = open_storage(storage_config)
    run_id = _copy_run(completed_run, storage)
    run_files = storage.list_files(storage.join(run_id))
    whole = (
        {"version.json"}
        | {f for f in run_files if f.startswith("model/")}
        | {f for f in ("config.yaml", "metrics.parquet", "summary.json", "provenance.json") if f in run_files}
    )
    registry = Registry(storage)
    racers = Racers(2, storage_config)
    try:
        for version in range(1, ROUNDS + 1):
            force = version % 2 == 0  # even rounds: `models delete --force`, which may delete a REGISTERING one
            (registered, outcome), (deleted, refusal) = racers.race(
                ("_register", (run_id, "racing")), ("_delete_once_claimed", ("racing", version, force))
            )
            record = registry.versions("racing")[version - 1]
            files = _version_files(storage, "racing", version)
            if record["status"] == READY:  # the registration won: the deletion saw it REGISTERING
                assert registered and not deleted and "is REGISTERING, not READY" in refusal and not force
                assert files == whole
            else:  # deleted, after READY or (forced) while REGISTERING, whose registration then failed
                assert record["status"] == "DELETED" and deleted, refusal
                assert registered or (force and "was deleted while it was being registered" in outcome), outcome
                assert files == {"version.json"}
    finally:
        racers.close()


class _DeletedUnderTheCopy:
    """A filesystem on which `models delete --force racing:1` comes just before the registration copies its first
    file of model/ (the moment the race above meets now and then)."""

    def __init__(self, storage: Storage):
        self.storage, self.deleted = storage, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage.filesystem, name)

    def copy_file(self, source: str, destination: str) -> None:
        if "/model/" in destination and not self.deleted:
            self.deleted = True
            Registry(self.storage).delete("racing", 1, force=True)
        self.storage.filesystem.copy_file(source, destination)


def test_a_forced_deletion_under_a_local_copy_fails_the_registration_as_deleted(completed_run, tmp_path):
    storage = open_storage(StorageConfig(uri=str(tmp_path / "runs")))
    run_id = _copy_run(completed_run, storage)
    copying = dataclasses.replace(storage, filesystem=_DeletedUnderTheCopy(storage))
    with pytest.raises(ValueError, match=r"^racing:1 was deleted while it was being registered: nothing was regis"):
        Registry(copying).register(RunStore(copying).get(run_id), "racing", {})
    assert copying.filesystem.deleted
    assert Registry(storage).versions("racing")[0]["status"] == "DELETED"
    assert _version_files(storage, "racing", 1) == {"version.json"}


@pytest.mark.slow
def test_an_alias_racing_a_deletion_never_points_at_a_version_that_is_not_ready(completed_run, storage_config):
    storage = open_storage(storage_config)
    run_id = _copy_run(completed_run, storage)
    registry = Registry(storage)
    run = RunStore(storage).get(run_id)
    for _ in range(ROUNDS + 1):
        registry.register(run, "racing", {})
    registry.set_alias("racing", 1, "production")
    racers = Racers(2, storage_config)
    try:
        for version in range(2, ROUNDS + 2):
            (aliased, _), (deleted, refusal) = racers.race(
                ("_alias", ("racing", version, "production")), ("_delete", ("racing", version))
            )
            assert aliased != deleted, refusal  # one of them, never both
            target = registry.aliases("racing")["production"]
            assert registry.get("racing@production")["status"] == READY
            assert target == (version if aliased else 1)
            if aliased:
                assert f"racing:{version} is @production: move the alias first" in refusal
            registry.set_alias("racing", 1, "production")  # the next round moves it again
    finally:
        racers.close()


def test_a_version_still_registering_is_deleted_only_with_force(tmp_path):
    """A registration that died half-way leaves its version REGISTERING: deleting it needs saying so."""
    storage = open_storage(StorageConfig(uri=str(tmp_path)))
    record = {"name": "half", "version": 1, "status": REGISTERING, "run_id": "x", "tags": {}, "metrics": {}}
    assert storage.create_exclusive(storage.join("models", "half", "1", "version.json"), json.dumps(record).encode())
    refused = _dltrain("models", "delete", "half:1", "--yes", "--storage", str(tmp_path))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "half:1 is REGISTERING, not READY: a registration is copying it, or died doing so" in refused.stderr
    forced = _dltrain("models", "delete", "half:1", "--yes", "--force", "--storage", str(tmp_path))
    assert forced.stdout == "deleted half:1\n", forced.stderr
    assert Registry(storage).versions("half")[0]["status"] == "DELETED"


@pytest.mark.slow
def test_a_registration_stalled_mid_copy_on_s3_is_deleted_only_with_force_and_then_fails(
    completed_run, s3_session_server, s3_outages, monkeypatch
):
    """The registration copies through a proxy that goes down at its first copy (it waits out the outage); the
    deletions go straight to the server meanwhile."""
    server = s3_session_server
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    bucket = create_bucket(server)
    storage = open_storage(StorageConfig(uri=f"s3://{bucket}/runs", endpoint_url=server.endpoint_url))
    run_id = _copy_run(completed_run, storage)
    outage = s3_outages.arm(r"/models/racing/1/model/", None)
    stalled = StorageConfig(uri=f"s3://{bucket}/runs", endpoint_url=s3_outages.endpoint_url, retry_seconds=300)
    racers = Racers(1, stalled)
    try:
        racers.orders[0].put(("_register", (run_id, "racing")))
        assert outage.started.wait(timeout=120), "the registration never copied"
        options = ["--storage", f"s3://{bucket}/runs", "--endpoint-url", server.endpoint_url]
        refused = subprocess.run([DLTRAIN, "models", "delete", "racing:1", "--yes", *options], capture_output=True,
                                 text=True, timeout=120)  # fmt: skip
        assert refused.returncode == 2 and "racing:1 is REGISTERING, not READY" in refused.stderr, refused.stderr
        forced = subprocess.run([DLTRAIN, "models", "delete", "racing:1", "--yes", "--force", *options],
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert forced.stdout == "deleted racing:1\n", forced.stderr
        s3_outages.end(outage)
        registered, outcome = racers.result(0)
    finally:
        s3_outages.end(outage)
        racers.close()
    assert not registered and outcome == "racing:1 was deleted while it was being registered: nothing was registered"
    assert Registry(storage).versions("racing")[0]["status"] == "DELETED"
    assert _version_files(storage, "racing", 1) == {"version.json"}  # what it had copied went with it


def _lost_run(storage: Storage) -> str:
    """A run whose driver died without a word: RUNNING, its heartbeat 5 minutes old, from another machine."""
    run = RunStore(storage).create({"trainer": {}}, {})
    old = (datetime.now(timezone.utc) - timedelta(minutes=5)).isoformat(timespec="seconds")

    def died(record: dict) -> dict:
        return record | {"status": "RUNNING", "heartbeat": old, "driver": {"host": "elsewhere", "pid": 1}}

    storage.update_json(storage.join(run.id, "status.json"), died)
    return run.id


def test_two_resumes_of_a_lost_run_make_one_driver_and_a_deletion_and_a_resume_one_winner(storage_config):
    storage = open_storage(storage_config)
    store = RunStore(storage)
    racers = Racers(2, storage_config)
    try:
        for _ in range(ROUNDS // 2):
            run_id = _lost_run(storage)
            outcomes = racers.race(("_claim", (run_id,)), ("_claim", (run_id,)))
            assert sorted(succeeded for succeeded, _ in outcomes) == [False, True], outcomes
            (refusal,) = [message for succeeded, message in outcomes if not succeeded]
            assert refusal.startswith(f"run {run_id} is PENDING: its driver ") and "stop it first" in refusal
            status = store.get(run_id).status()
            assert (status["status"], len(status["resumed"])) == ("PENDING", 1)

            run_id = _lost_run(storage)
            (claimed, claim_message), (marked, mark_message) = racers.race(
                ("_claim", (run_id,)), ("_mark_deleting", (run_id,))
            )
            assert claimed != marked, (claim_message, mark_message)
            status = store.get(run_id).status()
            assert ("deleting" in status) == marked and (status["status"] == "PENDING") == claimed
            if claimed:
                assert mark_message == f"{run_id} PENDING: a driver started it meanwhile; stop it first (or --force)"
            else:
                assert claim_message == f"run {run_id} is being deleted (since {status['deleting']}): delete it again"
    finally:
        racers.close()


def _drive(storage_config: StorageConfig, started: Any, finish: Any) -> None:
    """A driver: create a run, beat for it until told to finish, then complete it."""
    run = RunStore(open_storage(storage_config)).create({"trainer": {}}, {})
    with run.heartbeat(seconds=0.5):
        started.put(run.id)
        finish.wait(timeout=CLAIM_WAIT_S)
        run.set_status("COMPLETED")


def test_a_run_whose_driver_is_alive_is_neither_resumed_nor_deleted(storage_config):
    context = multiprocessing.get_context("spawn")
    started, finish = context.Queue(), context.Event()
    driver = context.Process(target=_drive, args=(storage_config, started, finish))
    driver.start()
    racers = Racers(2, storage_config)
    try:
        run_id = started.get(timeout=CLAIM_WAIT_S)  # PENDING: its driver would be starting Ray now
        (claimed, claim_refusal), (marked, delete_refusal) = racers.race(
            ("_claim", (run_id,)), ("_mark_deleting", (run_id,))
        )
        assert not claimed and claim_refusal.startswith(f"run {run_id} is PENDING: its driver "), claim_refusal
        assert not marked and delete_refusal.startswith(f"{run_id} PENDING: ")
        endpoint = storage_config.endpoint_url
        cli = ["--storage", storage_config.uri, *(["--endpoint-url", endpoint] if endpoint else [])]
        deleted = _dltrain("runs", "delete", run_id, "--yes", *cli)
        assert deleted.returncode == 2 and deleted.stderr.count("\n") == 1
        assert f"{run_id} PENDING: stop it first (or --force); nothing was deleted" in deleted.stderr
        if storage_config.endpoint_url is None:  # the whole command, once: it refuses before Ray starts
            resumed = subprocess.run([sys.executable, "-m", "dltrain", f"resume={run_id}",
                                      f"storage.uri={storage_config.uri}"], capture_output=True, text=True,
                                     timeout=300)  # fmt: skip
            assert resumed.returncode == 2 and resumed.stderr.count("\n") == 1, resumed.stderr
            assert resumed.stderr.startswith(f"dltrain: error: resume={run_id}: run {run_id} is PENDING: its driver ")
    finally:
        finish.set()
        driver.join(timeout=120)
        racers.close()
    assert driver.exitcode == 0
    status = RunStore(open_storage(storage_config)).get(run_id).status()
    assert status["status"] == "COMPLETED" and "resumed" not in status and "deleting" not in status
