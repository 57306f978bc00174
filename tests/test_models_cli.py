"""`dltrain models ...` as a user runs it: the model registry over a real run's folder, on local storage and on S3,
and registrations racing from concurrent processes."""

import json
import multiprocessing
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.fs
import pytest

from dltrain.job import StorageConfig
from dltrain.registry import Registry
from dltrain.runs import RunStore
from dltrain.storage import open_storage

from helpers.s3server import create_bucket

DLTRAIN = str(Path(sys.executable).parent / "dltrain")
RACERS = 6  # concurrent registrations of one name


def _dltrain(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([DLTRAIN, *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
def storage(completed_run, tmp_path) -> Path:
    """A storage of this test's own holding a copy of the real completed run."""
    shutil.copytree(completed_run, tmp_path / "runs" / completed_run.name)
    return tmp_path / "runs"


@pytest.mark.slow
def test_register_twice_move_an_alias_download_by_alias_and_delete(storage, tmp_path):
    (run_id,) = [path.name for path in storage.iterdir()]
    options = ["--storage", str(storage)]
    first = _dltrain("models", "register", run_id, "--name", "fashion", "--tag", "team=vision", "--alias", "staging",
                     *options)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert first.stdout == (
        f"registered fashion:1 from run {run_id} -> {storage}/models/fashion/1\nfashion@staging -> version 1\n"
    )
    second = _dltrain("models", "register", run_id, "--name", "fashion", *options)
    assert second.stdout == f"registered fashion:2 from run {run_id} -> {storage}/models/fashion/2\n"
    assert _dltrain("models", "alias", "fashion", "2", "production", *options).stdout == (
        "fashion@production -> version 2\n"
    )
    summary = json.loads((storage / run_id / "summary.json").read_text())
    header, row = _dltrain("models", "list", *options).stdout.splitlines()
    assert header.split() == ["name", "versions", "latest", "test_acc", "registered", "aliases"]
    assert row.split()[:4] == ["fashion", "2", "2", f"{summary['test_accuracy']:.4f}"]
    assert row.split()[-2:] == ["@production=2,", "@staging=1"]
    listed = json.loads(_dltrain("models", "list", "--json", *options).stdout)
    assert listed == [{
        "name": "fashion", "versions": 2, "latest_version": 2, "latest_test_accuracy": summary["test_accuracy"],
        "latest_created": listed[0]["latest_created"], "aliases": {"production": 2, "staging": 1},
    }]  # fmt: skip

    versions = _dltrain("models", "show", "fashion", *options).stdout.splitlines()
    assert versions[0] == "model fashion: 2 version(s)"
    assert [line.split()[:3] for line in versions[2:]] == [["1", "READY", run_id], ["2", "READY", run_id]]
    assert versions[2].split()[-2:] == ["@staging", "team=vision"]
    production = json.loads(_dltrain("models", "show", "fashion@production", "--json", *options).stdout)
    assert (production["version"], production["run_id"], production["status"]) == (2, run_id, "READY")
    assert production["metrics"] == {key: summary[key] for key in ("test_loss", "test_accuracy")}
    assert production["provenance"]["data_md5"] and production["library_versions"]["tensorflow"]
    assert production["uri"] == f"{storage}/models/fashion/2"
    shown = _dltrain("models", "show", "fashion:1", *options).stdout.splitlines()
    assert shown[0] == f"fashion:1  READY  -> {storage}/models/fashion/1" and "  tags: team=vision" in shown

    moved = _dltrain("models", "alias", "fashion", "1", "production", *options)
    assert moved.stdout == "fashion@production -> version 1 (was version 2)\n"
    refused = _dltrain("models", "delete", "fashion:1", "--yes", *options)
    assert refused.returncode == 2 and "fashion:1 is @production, @staging: move the alias first" in refused.stderr
    assert _dltrain("models", "delete", "fashion:2", "--yes", *options).stdout == "deleted fashion:2\n"
    deleted = storage / "models" / "fashion" / "2"
    assert [path.name for path in deleted.iterdir()] == ["version.json"]  # only the record, saying DELETED
    assert json.loads((deleted / "version.json").read_text())["status"] == "DELETED"
    gone = _dltrain("models", "download", "fashion:2", str(tmp_path / "gone"), *options)
    assert gone.returncode == 2 and "fashion:2 is DELETED, not READY" in gone.stderr
    third = _dltrain("models", "register", run_id, "--name", "fashion", *options)
    assert third.stdout.startswith("registered fashion:3 ")  # a number never names two models

    # Where a run id is accepted, NAME:N and NAME@alias name the run the version came from.
    shown = json.loads(_dltrain("runs", "show", "fashion@production", "--json", *options).stdout)
    assert shown["overview"]["id"] == run_id
    # A version is a copy: it outlives its run's folder.
    assert _dltrain("runs", "delete", run_id, "--yes", *options).returncode == 0
    model = tmp_path / "production"
    downloaded = _dltrain("models", "download", "fashion@production", str(model), *options)
    assert downloaded.returncode == 0, downloaded.stderr
    files = sorted(path.name for path in model.iterdir())
    assert files == ["confusion_matrix.json", "model.keras", "test_metrics.json"]
    version = storage / "models" / "fashion" / "1"
    assert (model / "model.keras").read_bytes() == (version / "model" / "model.keras").read_bytes()
    assert {path.name for path in version.iterdir()} >= {"config.yaml", "metrics.parquet", "summary.json", "model"}
    assert _dltrain("runs", "list", *options).stdout.strip() == "no runs"  # models/ is not a run


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "nope"], "no model 'nope' in "),
        (["show", "fashion:x"], "'fashion:x' is not a model reference: NAME, NAME:N or NAME@alias"),
        (["register", "20990101-000000-abcdef", "--name", "ok"], "no run '20990101-000000-abcdef' in "),
        (["register", "../etc", "--name", "ok"], "'../etc' is not a run id"),
        (["alias", "nope", "1", "9lives"], "'9lives' is not an alias"),
        (["delete", "nope", "--yes"], "'nope': give one version, NAME:N"),
        (["download", "nope@production", "/nonexistent/x"], "no model 'nope' in "),
    ],
)
def test_bad_input_exits_2_in_one_line(args, message, tmp_path):
    result = _dltrain("models", *args, "--storage", str(tmp_path))
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.slow
def test_registering_needs_a_completed_run_and_a_good_name(storage):
    (run_id,) = [path.name for path in storage.iterdir()]
    bad_name = _dltrain("models", "register", run_id, "--name", "../x", "--storage", str(storage))
    assert bad_name.returncode == 2 and "'../x' is not a model name" in bad_name.stderr
    status = storage / run_id / "status.json"
    status.write_text(json.dumps(json.loads(status.read_text()) | {"status": "FAILED"}))
    failed = _dltrain("models", "register", run_id, "--name", "fashion", "--storage", str(storage))
    assert failed.returncode == 2 and f"run {run_id} is FAILED: only a COMPLETED run" in failed.stderr
    assert not (storage / "models").exists()


def _register_at_once(storage_config: StorageConfig, run_id: str, barrier, versions) -> None:
    """One racer: open the storage, wait for every racer, register, report the version it got."""
    storage = open_storage(storage_config)
    run = RunStore(storage).get(run_id)
    barrier.wait()
    versions.put(Registry(storage).register(run, "racing", {})["version"])


def _race(storage_config: StorageConfig, run_id: str) -> list[int]:
    """The versions RACERS processes got, registering the same run at the same moment."""
    context = multiprocessing.get_context("spawn")
    barrier, versions = context.Barrier(RACERS), context.Queue()
    racers = [
        context.Process(target=_register_at_once, args=(storage_config, run_id, barrier, versions))
        for _ in range(RACERS)
    ]
    for racer in racers:
        racer.start()
    got = [versions.get(timeout=120) for _ in racers]
    for racer in racers:
        racer.join(timeout=60)
        assert racer.exitcode == 0
    return got


@pytest.mark.slow
def test_concurrent_registrations_never_share_a_version_on_local_storage(storage):
    (run_id,) = [path.name for path in storage.iterdir()]
    got = _race(StorageConfig(uri=str(storage)), run_id)
    assert sorted(got) == list(range(1, RACERS + 1))
    records = Registry(open_storage(StorageConfig(uri=str(storage)))).versions("racing")
    assert [(record["version"], record["status"]) for record in records] == [(n, "READY") for n in sorted(got)]


@pytest.mark.slow
def test_concurrent_registrations_and_the_commands_on_s3(completed_run, s3_session_server, tmp_path, monkeypatch):
    server = s3_session_server
    bucket = create_bucket(server)
    pyarrow.fs.copy_files(str(completed_run), f"{bucket}/runs/{completed_run.name}",
                          destination_filesystem=server.arrow_fs())  # fmt: skip
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)  # the racers, spawned, inherit the credentials
    config = StorageConfig(uri=f"s3://{bucket}/runs", endpoint_url=server.endpoint_url)
    got = _race(config, completed_run.name)
    assert sorted(got) == list(range(1, RACERS + 1))
    options = ["--storage", config.uri, "--endpoint-url", server.endpoint_url]
    aliased = _dltrain("models", "alias", "racing", "3", "production", *options)
    assert aliased.stdout == "racing@production -> version 3\n", aliased.stderr
    shown = json.loads(_dltrain("models", "show", "racing", "--json", *options).stdout)
    assert [record["status"] for record in shown["versions"]] == ["READY"] * RACERS
    assert shown["aliases"] == {"production": 3}
    model = tmp_path / "model"
    assert _dltrain("models", "download", "racing@production", str(model), *options).returncode == 0
    assert (model / "model.keras").read_bytes() == (completed_run / "model" / "model.keras").read_bytes()
    refused = _dltrain("models", "delete", "racing:3", "--yes", *options)
    assert refused.returncode == 2 and "racing:3 is @production" in refused.stderr
    assert _dltrain("models", "delete", "racing:4", "--yes", *options).stdout == "deleted racing:4\n"
    keys = [item["Key"] for item in server.client().list_objects_v2(Bucket=bucket, Prefix="runs/models/")["Contents"]]
    left = [key for key in keys if key.startswith("runs/models/racing/4/") and not key.endswith("/")]  # no markers
    assert left == ["runs/models/racing/4/version.json"]
    assert any(key == "runs/models/racing/3/model/model.keras" for key in keys)


@pytest.mark.slow
def test_links_planted_in_a_run_folder_are_never_copied(storage, tmp_path):
    """A symbolic link in a run folder may point anywhere: register, runs download and models download copy no
    link, nor what it points at (locally; S3 has no links)."""
    (run_id,) = [path.name for path in storage.iterdir()]
    run = storage / run_id
    secret = tmp_path / "secret"
    (secret / "keys").mkdir(parents=True)
    (secret / "keys" / "id_rsa").write_text("PRIVATE KEY")
    (secret / "notes.txt").write_text("PRIVATE NOTES")
    (run / "model" / "notes.txt").symlink_to(secret / "notes.txt")  # a file out of the storage
    (run / "model" / "keys").symlink_to(secret / "keys", target_is_directory=True)  # a folder out of it
    (run / "provenance.json").rename(run / "provenance.kept")
    (run / "provenance.json").symlink_to(secret / "notes.txt")  # one of the files a version copies
    (run / "logs" / "all").symlink_to(storage, target_is_directory=True)  # a loop through the storage
    options = ["--storage", str(storage)]
    registered = _dltrain("models", "register", run_id, "--name", "linked", *options)
    assert registered.returncode == 0, registered.stderr
    version = storage / "models" / "linked" / "1"
    copied = {str(path.relative_to(version)) for path in version.rglob("*") if path.is_file()}
    assert copied == {"version.json", "config.yaml", "metrics.parquet", "summary.json", "model/model.keras",
                      "model/test_metrics.json", "model/confusion_matrix.json"}  # fmt: skip
    assert not any(path.is_symlink() for path in version.rglob("*"))
    for args, destination in [(("runs", "download", run_id), tmp_path / "run"),
                              (("runs", "download", run_id, "--model-only"), tmp_path / "model"),
                              (("models", "download", "linked:1"), tmp_path / "version")]:  # fmt: skip
        downloaded = _dltrain(*args[:3], str(destination), *args[3:], *options)
        assert downloaded.returncode == 0, downloaded.stderr
        files = [path for path in destination.rglob("*") if path.is_file()]
        assert files and not any(path.is_symlink() for path in destination.rglob("*"))
        assert not any(b"PRIVATE" in path.read_bytes() for path in files), args
        assert not (destination / "logs" / "all").exists() and not (destination / "provenance.json").exists()


def test_models_list_shows_folders_that_do_not_read_as_models_as_unreadable_and_lists_the_rest(tmp_path):
    storage = open_storage(StorageConfig(uri=str(tmp_path)))
    run = RunStore(storage).create({}, {})
    for name, content in (("model.keras", b"a model"), ("test_metrics.json", b'{"test_accuracy": 0.5}')):
        storage.write_bytes(f"{run.path}/model/{name}", content)
    run.set_status("COMPLETED")
    registry = Registry(storage)
    registry.register(run, "good", {}, alias="production")
    registry.register(run, "broken", {})
    (tmp_path / "models" / "broken" / "1" / "version.json").write_text('{"status": "REA')
    (tmp_path / "models" / "notes").mkdir()  # a stray folder with a model's name and no version
    (tmp_path / "models" / "tmp stuff").mkdir()  # and one without
    listed = _dltrain("models", "list", "--storage", str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[1].split()[:3] == ["good", "1", "1"] and len(lines) == 5
    assert lines[2].startswith(f"{tmp_path}/models/broken: unreadable (")
    assert lines[3] == f"{tmp_path}/models/notes: unreadable (no model 'notes' in {tmp_path}/models)"
    assert lines[4].startswith(f"{tmp_path}/models/tmp stuff: unreadable ('tmp stuff' is not a model name")
    items = json.loads(_dltrain("models", "list", "--json", "--storage", str(tmp_path)).stdout)
    assert [(item["name"], "unreadable" in item) for item in items] == [
        ("good", False), ("broken", True), ("notes", True), ("tmp stuff", True)
    ]  # fmt: skip
    assert items[0]["aliases"] == {"production": 1} and items[1]["versions"] is None
