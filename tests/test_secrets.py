"""Secrets stay out of what dltrain writes and prints: the values of secret-looking keys and credentials in URLs,
in saved configs, provenance, logs, the registry and error messages; resume= and rerun= take them from the
command line again, never the *** that was saved. The run that proves it posts to a real HTTP server."""

import base64
import json
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from dltrain import config
from dltrain.job import StorageConfig
from dltrain.provenance import command_line
from dltrain.redaction import Scrubber, redact
from dltrain.runs import RunStore
from dltrain.storage import open_storage

from helpers.config import compose_config

DLTRAIN = str(Path(sys.executable).parent / "dltrain")
PASSWORD, TOKEN = "pw-4f9e21", "tok-77ab91"  # in the callback's URL, and in one of its headers


def _callback(port: int) -> str:
    """The override of a Keras RemoteMonitor posting each epoch to 127.0.0.1:`port` with both secrets."""
    return (f'+trainer.callbacks.remote={{_target_: keras.callbacks.RemoteMonitor, root: "http://alice:{PASSWORD}@'
            f'127.0.0.1:{port}", headers: {{X-Api-Token: {TOKEN}}}}}')  # fmt: skip


def test_redaction_covers_secret_key_names_and_credentials_in_urls():
    given = {
        "key": "k-1234", "api_key": "a-1234", "apiKey": "b-1234", "Authorization": "Bearer c-1234",
        "client_secret": "d-1234", "access_token": "e-1234", "X-Api-Token": "f-1234", "password": 12345678,
        "credentials": {"user": "g-1234", "more": ["h-1234"]}, "private_key": "i-1234", "cookie": "j-1234",
        "keep_checkpoints": 2, "tokenizer": "bpe", "author": "ada", "use_auth": True, "token": None,
        "urls": ["http://alice:l-1234@host:9/x", "s3://AKIAEXAMPLE:wJal/rX+Y@bucket/x", "https://m-1234@github.com/a",
                 "http://host:80/plain"],
    }  # fmt: skip
    assert redact(given) == {
        "key": "***", "api_key": "***", "apiKey": "***", "Authorization": "***", "client_secret": "***",
        "access_token": "***", "X-Api-Token": "***", "password": "***", "credentials": {"user": "***", "more": ["***"]},
        "private_key": "***", "cookie": "***", "keep_checkpoints": 2, "tokenizer": "bpe", "author": "ada",
        "use_auth": True, "token": None,
        "urls": ["http://***@host:9/x", "s3://***@bucket/x", "https://***@github.com/a", "http://host:80/plain"],
    }  # fmt: skip
    scrub = Scrubber(given)
    line = "warning: Bearer c-1234 went to http://alice:l-1234@host:9 with wJal/rX+Y and 12345678; 2 epochs by ada"
    assert scrub(line) == "warning: *** went to http://***@host:9 with *** and ***; 2 epochs by ada"


def test_the_recorded_command_line_hides_secrets_inside_mapping_overrides():
    other = "+trainer.callbacks.other={_target_: keras.callbacks.History}"
    overrides = [_callback(9), other, "+trainer.callbacks.other.api_key=k-98765", "trainer.epochs=2"]
    job = config.resolve(compose_config(*overrides))
    line = command_line(overrides, Scrubber(config.to_mapping(job)))
    assert PASSWORD not in line and TOKEN not in line and "k-98765" not in line
    assert line == ("python -m dltrain +trainer.callbacks.remote={_target_: keras.callbacks.RemoteMonitor, root: "
                    f"http://***@127.0.0.1:9, headers: {{X-Api-Token: ***}}}} {other} "
                    "+trainer.callbacks.other.api_key=*** trainer.epochs=2")  # fmt: skip


@pytest.mark.parametrize(
    "command",
    [
        [DLTRAIN, "runs", "list", "--storage", "s3://AKIAEXAMPLE:wJalrXUtnFEMI/K7MDENG@my-bucket/runs"],
        [sys.executable, "-m", "dltrain", "storage=s3", "storage.uri=s3://AKIAEXAMPLE:wJalrXUtnFEMI/K7MDENG@b/runs"],
    ],
)
def test_errors_never_echo_the_credentials_of_a_uri(command):
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "s3://***@" in result.stderr and "wJalr" not in result.stderr and "AKIAEXAMPLE" not in result.stderr


def test_resume_and_rerun_of_a_run_with_redacted_values_name_the_keys_to_give_again(tmp_path):
    job = config.resolve(compose_config(_callback(9), f"storage.uri={tmp_path}"))
    run = RunStore(open_storage(StorageConfig(uri=str(tmp_path)))).create(config.to_mapping(job), {})
    run.set_status("FAILED", "the machine rebooted")
    assert PASSWORD not in (tmp_path / run.id / "config.yaml").read_text()
    keys = "trainer.callbacks.remote.root, trainer.callbacks.remote.headers.X-Api-Token"
    for command in (["train", f"resume={run.id}", f"storage.uri={tmp_path}"], ["rerun", run.id, "--storage",
                                                                                str(tmp_path)]):  # fmt: skip
        result = subprocess.run([DLTRAIN, *command], capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert f"={run.id}: the saved config holds {keys} redacted (***): give them on this command line" in (
            result.stderr
        )
    assert json.loads((tmp_path / run.id / "status.json").read_text())["status"] == "FAILED"  # nothing started


class _Recorder(BaseHTTPRequestHandler):
    """Keeps the headers of every POST (RemoteMonitor's epoch reports)."""

    posts: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Recorder.posts.append(dict(self.headers))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def _leaks(folder: Path) -> list[str]:
    """The files below `folder` that hold either secret."""
    return [str(path) for path in folder.rglob("*") if path.is_file() and any(
        secret.encode() in path.read_bytes() for secret in (PASSWORD, TOKEN))]  # fmt: skip


@pytest.mark.slow
def test_a_runs_secrets_stay_out_of_its_files_logs_and_registry_and_a_rerun_gets_them_again(real_data, tmp_path):
    storage = tmp_path / "runs"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    closed = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    closed.server_close()  # a port nobody listens on: RemoteMonitor's posts are refused, and Keras warns
    threading.Thread(target=server.serve_forever, daemon=True).start()
    small = ["trainer.epochs=2", "dataset.limit=1280", "trainer.batch_size=64", f"dataset.path={real_data}",
             f"storage.uri={storage}", "trainer.progress=epochs"]  # fmt: skip
    try:
        first = subprocess.run([DLTRAIN, "train", *small, _callback(closed.server_address[1])], capture_output=True,
                               text=True, timeout=600)  # fmt: skip
        assert first.returncode == 0, first.stderr[-3000:]
        run_id = first.stdout.split()[2]
        # Keras warned with the URL it could not reach, credentials and all: the stored log has it scrubbed.
        (log,) = (storage / run_id / "logs").glob("worker-0-*.log")
        assert f"Could not reach RemoteMonitor root server at http://***@127.0.0.1:{closed.server_address[1]}" in (
            log.read_text()
        )
        assert "X-Api-Token: ***" in json.loads((storage / run_id / "provenance.json").read_text())["command"]
        registered = subprocess.run([DLTRAIN, "models", "register", run_id, "--name", "remote", "--storage",
                                     str(storage)], capture_output=True, text=True, timeout=120)  # fmt: skip
        assert registered.returncode == 0, registered.stderr
        shown = subprocess.run([DLTRAIN, "models", "show", "remote:1", "--json", "--storage", str(storage)],
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        assert shown.returncode == 0 and PASSWORD not in shown.stdout and TOKEN not in shown.stdout
        assert not _leaks(storage) and PASSWORD not in first.stdout + first.stderr

        # The rerun is given the callback again, here pointing at the live server: it posts the real secrets.
        rerun = subprocess.run([DLTRAIN, "rerun", run_id, "--storage", str(storage), _callback(server.server_port)],
                               capture_output=True, text=True, timeout=600)  # fmt: skip
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    finally:
        server.shutdown()
        server.server_close()
    assert len(_Recorder.posts) == 2  # one per epoch
    basic = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert all(post["X-Api-Token"] == TOKEN and post["Authorization"] == basic for post in _Recorder.posts)
    assert not _leaks(storage)
    shutil.rmtree(storage)
