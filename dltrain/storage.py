"""Where run folders live: a pyarrow filesystem and a root path on it, a local folder or an S3 prefix.

Ray Train persists checkpoints through the same (filesystem, path) pair, so dltrain's files and Ray's share
one folder per run.
"""

import contextlib
import dataclasses
import fcntl
import functools
import getpass
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from dltrain.errors import DltrainError
from dltrain.job import DEFAULT_RETRY_SECONDS, StorageConfig
from dltrain.redaction import scrub_urls
from dltrain.retrying_fs import retried, retrying, with_retry_seconds

# Attempts of one request inside pyarrow: a dropped request is repeated at once; outages are ridden out above it,
# by dltrain's retrying filesystem, for storage.retry_seconds.
_S3_ATTEMPTS = 3
LOCK_WAIT_S = 60  # how long a lock (Storage.lock) is waited for before giving up
LEASE_S = 60  # an S3 lock's lease: a lock its holder has not given back is free this long after it was taken


def default_local_root() -> Path:
    """$DLTRAIN_STORAGE, else ~/dltrain_results."""
    return Path(os.environ.get("DLTRAIN_STORAGE") or Path.home() / "dltrain_results")


def cache_dir() -> Path:
    """dltrain's cache on this machine: $DLTRAIN_CACHE, else ~/.cache/dltrain."""
    return Path(os.environ.get("DLTRAIN_CACHE") or Path.home() / ".cache" / "dltrain")


@dataclass(frozen=True)
class Storage:
    """A folder on a filesystem: `root` is the path the filesystem understands, `uri` the one users see."""

    filesystem: pafs.FileSystem
    root: str
    uri: str
    endpoint_url: str | None = None  # S3's: for the requests pyarrow cannot make (create_exclusive)
    region: str | None = None

    def join(self, *parts: str) -> str:
        """Path of `parts` below the root."""
        return "/".join([self.root.rstrip("/"), *parts])

    def uri_of(self, *parts: str) -> str:
        """User-facing location of `parts` below the root."""
        return "/".join([self.uri.rstrip("/"), *parts])

    def with_retry_seconds(self, seconds: float) -> "Storage":
        """The same folder, with calls retried through outages for `seconds` (where this storage retries)."""
        return dataclasses.replace(self, filesystem=with_retry_seconds(self.filesystem, seconds))

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a whole file atomically: readers see the old content or the new, never a part."""
        parent = path.rsplit("/", 1)[0]
        self.filesystem.create_dir(parent, recursive=True)
        partial = f"{parent}/.{uuid.uuid4().hex}.partial"
        with self.filesystem.open_output_stream(partial) as stream:
            stream.write(data)
        self.filesystem.move(partial, path)

    def create_exclusive(self, path: str, data: bytes) -> bool:
        """Create the file `path` holding `data` unless a file of that name exists; True if this call made it.

        Of concurrent callers on any machines, exactly one wins a name, and readers never see a part of the file:
        locally by hard-linking a complete temporary file to the name (link(2) fails if the name exists); on S3
        by a conditional PUT (If-None-Match: *), which the server refuses with 412 if the key exists.
        """
        parent = path.rsplit("/", 1)[0]
        if not self.uri.startswith("s3://"):
            Path(parent).mkdir(parents=True, exist_ok=True)
            partial = Path(parent) / f".{uuid.uuid4().hex}.partial"
            partial.write_bytes(data)
            try:
                os.link(partial, path)
                return True
            except FileExistsError:
                return False
            finally:
                partial.unlink()
        return self._conditional_put(path, data, {"IfNoneMatch": "*"})

    def _conditional_put(self, path: str, data: bytes, condition: dict[str, str]) -> bool:
        """PUT `data` at `path` on S3 if `condition` (If-None-Match or If-Match) holds there; False on 412."""
        import botocore.exceptions

        bucket, key = path.split("/", 1)
        client = s3_client(self.endpoint_url, self.region)
        for attempt in range(_S3_ATTEMPTS * 3):
            try:
                retried(self.filesystem, "writing", path,
                        lambda: client.put_object(Bucket=bucket, Key=key, Body=data, **condition))  # fmt: skip
                return True
            except botocore.exceptions.ClientError as error:
                code = error.response.get("Error", {}).get("Code")
                if code in ("PreconditionFailed", "412"):
                    return False
                if code != "ConditionalRequestConflict":  # 409: another conditional write is in flight; try again
                    raise
                time.sleep(0.1 * (attempt + 1))
        raise OSError(f"{self.uri_of(path)}: concurrent writers kept conflicting")

    def update_json(self, path: str, change: Callable[[dict | None], dict | None]) -> dict | None:
        """Read the JSON file `path` (None where there is none), apply `change` and write what it returns (None:
        leave the file as it is), atomically against every other update of that file, from any machine; returns
        the file's content after the update.

        Locally the update holds the file's lock (`lock`); on S3 the write is a conditional PUT (If-Match: the
        ETag read, or If-None-Match: * for a new file) and, where another writer came first, the update starts
        again from the read. `change` may therefore be called more than once, and must only compute.
        """
        if not self.uri.startswith("s3://"):
            with self.lock(path):
                current = self.read_json(path) if self.exists(path) else None
                changed = change(current)
                if changed is not None:
                    self.write_bytes(path, json.dumps(changed, indent=2).encode())
                return current if changed is None else changed
        while True:
            response = self._get_object(path)
            if response is None:
                current, condition = None, {"IfNoneMatch": "*"}
            else:
                current, condition = json.loads(response["Body"].read()), {"IfMatch": response["ETag"]}
            changed = change(current)
            if changed is None:
                return current
            if self._conditional_put(path, json.dumps(changed, indent=2).encode(), condition):
                return changed

    def _get_object(self, path: str) -> dict | None:
        """One GET of the S3 object `path` (boto3's response), None where there is none: one version of it, whole,
        where pyarrow's ranged reads of an object being replaced may mix two."""
        import botocore.exceptions

        bucket, key = path.split("/", 1)
        client = s3_client(self.endpoint_url, self.region)
        try:
            return retried(self.filesystem, "reading", path, lambda: client.get_object(Bucket=bucket, Key=key))
        except botocore.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                raise
            return None

    def read_json(self, path: str) -> Any:
        """The JSON file `path`, read whole: on S3 one version of it, even while another writer replaces it."""
        if not self.uri.startswith("s3://"):
            return json.loads(self.read_bytes(path))
        if (response := self._get_object(path)) is None:
            raise FileNotFoundError(f"s3://{path}: no such file")
        return json.loads(response["Body"].read())

    @contextlib.contextmanager
    def lock(self, path: str, wait_seconds: float = LOCK_WAIT_S) -> Iterator[None]:
        """Hold the lock of the file or folder `path` while the block runs: one holder at a time, on any machine;
        OSError naming the holder if it is not free within `wait_seconds`.

        Locally an flock(2) of `.NAME.lock` beside it, released by the kernel if its holder dies, and removed
        when the block ends. On S3 a lease, `.NAME.lock.json` beside it, taken by a conditional write
        (update_json); a lease that its holder did not give back (it died) may be taken LEASE_S after it was.
        """
        folder, _, name = path.rpartition("/")
        if not self.uri.startswith("s3://"):
            with _flocked(Path(folder) / f".{name}.lock", wait_seconds, self.uri_of(path)):
                yield
            return
        lease, token = f"{folder}/.{name}.lock.json", uuid.uuid4().hex
        holder = f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()}"

        def take(record: dict | None) -> dict | None:
            if record and record.get("token") not in (None, token) and record["until"] > time.time():
                return None  # held, and not for long enough to be a dead holder's
            return {"token": token, "holder": holder, "until": time.time() + LEASE_S}

        deadline, delay = time.monotonic() + wait_seconds, 0.05
        while (record := self.update_json(lease, take)) and record["token"] != token:
            if time.monotonic() > deadline:
                raise OSError(f"{self.uri_of(path)} is locked by {record['holder']}: try again")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        try:
            yield
        finally:
            self.update_json(lease, lambda record: {"token": None} if record and record["token"] == token else None)

    def read_bytes(self, path: str, offset: int = 0) -> bytes:
        """A file's content from byte `offset` on (the whole file by default)."""
        if offset == 0:
            with self.filesystem.open_input_stream(path) as stream:
                return stream.read()
        with self.filesystem.open_input_file(path) as file:
            file.seek(offset)
            return file.read()

    def exists(self, path: str) -> bool:
        """Whether a file or folder exists at `path`."""
        return self.filesystem.get_file_info(path).type != pafs.FileType.NotFound

    def upload(self, local_folder: str | Path, path: str) -> None:
        """Copy a local folder's files to `path`, replacing files of the same name."""
        self.filesystem.create_dir(path, recursive=True)
        # One file after another, as Ray uploads checkpoints (ray-project/ray#38695; threaded uploads to S3 can
        # hang: apache/arrow#32372). Threaded, a folder with subfolders (TensorBoard's train/ and validation/)
        # took 1 s per call on S3 here, 43x the unthreaded 0.02 s (scripts/bench_storage.py); a large file still
        # uploads its parts in parallel (S3FileSystem's background_writes).
        pafs.copy_files(str(local_folder), path, destination_filesystem=self.filesystem, use_threads=False)

    def download(self, path: str, destination: Path) -> int:
        """Copy the folder `path` to the local folder `destination`, which must not exist: it is filled under a
        hidden name beside it, then renamed, so it appears whole or not at all. Symbolic links in a local `path`
        are not followed (list_files). Returns the number of files."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
        try:
            files = self.list_files(path)
            for relative in files:  # one after another, as `upload`
                (partial / relative).parent.mkdir(parents=True, exist_ok=True)
                pafs.copy_files(f"{path}/{relative}", str(partial / relative), source_filesystem=self.filesystem,
                                use_threads=False)  # fmt: skip
            partial.rename(destination)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return len(files)

    def list_files(self, path: str) -> dict[str, int]:
        """Every file below `path`, by its path relative to it, with its size in bytes; not the hidden files of
        writes and locks in progress, nor, locally, symbolic links (or what is below a linked folder): what a
        copy of a folder must take, and no file outside it."""
        if not self.uri.startswith("s3://"):
            return {relative: size for relative, size in _local_files(path) if not _TRANSIENT_FILE.fullmatch(relative)}
        selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
        listed = {
            info.path.removeprefix(path.rstrip("/") + "/"): info.size
            for info in self.filesystem.get_file_info(selector)
            if info.type == pafs.FileType.File
        }
        return {relative: size for relative, size in listed.items() if not _TRANSIENT_FILE.fullmatch(relative)}

    def list_folders(self, path: str) -> list[str]:
        """Names of the folders directly below `path`."""
        selector = pafs.FileSelector(path, allow_not_found=True)
        return sorted(
            info.base_name for info in self.filesystem.get_file_info(selector) if info.type == pafs.FileType.Directory
        )


# Files that writes and locks in progress keep beside the ones they change (write_bytes, create_exclusive, lock).
_TRANSIENT_FILE = re.compile(r"(?:.*/)?\.[^/]*\.(?:partial|lock)")


def _local_files(path: str) -> Iterator[tuple[str, int]]:
    """(relative path, size) of the regular files below the local folder `path`, never through a symbolic link."""
    if os.path.islink(path):
        return
    for folder, _, names in os.walk(path):  # does not descend into linked folders
        for name in names:
            full = os.path.join(folder, name)
            if not os.path.islink(full) and os.path.isfile(full):
                yield os.path.relpath(full, path), os.path.getsize(full)


@contextlib.contextmanager
def _flocked(lock_file: Path, wait_seconds: float, what: str) -> Iterator[None]:
    """Hold an exclusive flock(2) of `lock_file` (made if missing; removed at the end, while still held)."""
    deadline = time.monotonic() + wait_seconds
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    while True:
        descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            while True:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise OSError(f"{what} stayed locked for {wait_seconds:g} s ({lock_file})") from None
                    time.sleep(0.01)
            # The holder before this one removes the file once done: a lock of a removed file is no lock.
            try:
                current = os.stat(lock_file).st_ino == os.fstat(descriptor).st_ino
            except FileNotFoundError:
                current = False
            if current:
                try:
                    yield
                finally:
                    lock_file.unlink(missing_ok=True)
                return
        finally:
            os.close(descriptor)


_S3_URI = re.compile(r"s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>.*))?")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, prefix) of an s3://bucket/prefix URI; ValueError naming the URI if it is malformed."""
    match = _S3_URI.fullmatch(uri)
    if not match:
        shown = scrub_urls(uri)  # s3://KEY:SECRET@bucket is not echoed
        raise ValueError(f"{shown!r} is not an S3 URI of the form s3://bucket/prefix (bucket: 3-63 of a-z 0-9 . -)")
    return match["bucket"], (match["prefix"] or "").strip("/")


def s3_filesystem(
    endpoint_url: str | None = None, region: str | None = None, retry_seconds: float = DEFAULT_RETRY_SECONDS
) -> pafs.FileSystem:
    """A pyarrow S3 filesystem with credentials from the standard AWS chain (environment, profile, role).

    Every call rides out outages: transient errors (refused or dropped connections, timeouts, 5xx, throttling)
    are retried with backoff for `retry_seconds`, then fail with one line naming the endpoint (retrying_fs.py).
    """
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    options = {
        "region": region,
        "connect_timeout": 5,
        "request_timeout": 60,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=_S3_ATTEMPTS),
        # Parts are uploaded by the thread that writes them. Background writes run on Arrow's I/O pool, which
        # pyarrow.fs.copy_files also runs on: nested, they can deadlock (apache/arrow#32372), and Ray copies
        # checkpoints with threads once the filesystem is not an S3FileSystem itself.
        "background_writes": False,
    }
    if endpoint_url:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"storage.endpoint_url={endpoint_url!r} is not an http(s)://host:port URL")
        options |= {"endpoint_override": parts.netloc, "scheme": parts.scheme}
    where = f"S3 at {endpoint_url}" if endpoint_url else f"S3 ({region})"
    return retrying(pafs.S3FileSystem(**options), retry_seconds, where)


def s3_client(endpoint_url: str | None, region: str | None) -> Any:
    """A boto3 S3 client with credentials from the standard AWS chain as the environment names them now, failing in
    seconds where S3 is unreachable."""
    aws_environment = tuple(sorted((name, value) for name, value in os.environ.items() if name.startswith("AWS_")))
    return _s3_client(endpoint_url, region or None, aws_environment)


@functools.lru_cache(maxsize=16)
def _s3_client(endpoint_url: str | None, region: str | None, aws_environment: tuple) -> Any:
    """One client per endpoint, region and AWS_* environment (the cache key), each from a session of its own:
    boto3's default session keeps the first credentials it resolves, for the life of the process."""
    import boto3
    import botocore.config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        config=botocore.config.Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2}),
    )


def check_bucket(bucket: str, endpoint_url: str | None, region: str | None, create: bool) -> None:
    """Fail in seconds, in one line, if the bucket is missing, the credentials wrong or the endpoint unreachable."""
    import botocore.exceptions

    where = f" at {endpoint_url}" if endpoint_url else ""
    client = s3_client(endpoint_url, region)
    try:
        client.head_bucket(Bucket=bucket)
    except botocore.exceptions.NoCredentialsError as error:
        raise ValueError("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile") from error
    except botocore.exceptions.EndpointConnectionError as error:
        raise ValueError(f"cannot reach the S3 endpoint{where}: {error}") from error
    except botocore.exceptions.ClientError as error:
        code = str(error.response.get("Error", {}).get("Code"))
        if code in ("404", "NoSuchBucket") and create:
            client.create_bucket(Bucket=bucket)
        elif code in ("404", "NoSuchBucket"):
            endpoint = f" --endpoint-url {endpoint_url}" if endpoint_url else ""
            raise ValueError(
                f"bucket {bucket!r} does not exist{where}: create it (aws s3 mb s3://{bucket}{endpoint}) "
                "or set storage.create_bucket=true"
            ) from error
        elif code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
            raise ValueError(
                f"the S3 endpoint{where} rejected the credentials for bucket {bucket!r} ({code})"
            ) from error
        else:
            raise ValueError(f"S3 bucket {bucket!r}{where}: {error}") from error


def cache_s3_folder(
    uri: str, names: list[str], endpoint_url: str | None, region: str | None, retry_seconds: float
) -> Path:
    """Download `names` from the S3 folder `uri` into this machine's cache once; returns the local folder.

    Safe when several workers share a node: one downloads under a file lock, and a file appears under its
    final name only once it is complete.
    """
    from filelock import FileLock

    bucket, prefix = parse_s3_uri(uri)
    cache = cache_dir() / "s3" / bucket / prefix
    cache.mkdir(parents=True, exist_ok=True)
    filesystem = s3_filesystem(endpoint_url, region, retry_seconds)
    with FileLock(cache / ".download.lock"):
        for name in names:
            if (cache / name).is_file():
                continue
            source = "/".join(part for part in (bucket, prefix, name) if part)
            if filesystem.get_file_info(source).type == pafs.FileType.NotFound:
                raise FileNotFoundError(f"{uri.rstrip('/')}/{name} does not exist")
            partial = cache / f".{name}.partial"
            pafs.copy_files(source, str(partial), source_filesystem=filesystem)
            partial.rename(cache / name)
    return cache


def open_storage(config: StorageConfig) -> Storage:
    """Storage for a `storage` config: a local folder (made absolute) or an s3://bucket/prefix URI."""
    uri = config.uri
    if uri and uri.startswith("s3://"):
        bucket, prefix = parse_s3_uri(uri)
        filesystem = s3_filesystem(config.endpoint_url, config.region, config.retry_seconds)
        root = f"{bucket}/{prefix}".rstrip("/")
        return Storage(filesystem, root, uri.rstrip("/"), config.endpoint_url, config.region)
    if uri and "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"storage.uri={scrub_urls(uri)}: expected a local folder or s3://bucket/prefix")
    root = Path(uri.removeprefix("file://")).expanduser() if uri else default_local_root()
    root = root.absolute()
    root.mkdir(parents=True, exist_ok=True)
    return Storage(pafs.LocalFileSystem(), str(root), str(root))


def check_storage(config: StorageConfig) -> None:
    """Check that a storage can be used (for S3: bucket, credentials, endpoint) before a run starts."""
    if config.uri and config.uri.startswith("s3://"):
        bucket, _ = parse_s3_uri(config.uri)
        check_bucket(bucket, config.endpoint_url, config.region, config.create_bucket)


def open_checked(config: StorageConfig) -> Storage:
    """The storage `config` names, its S3 bucket checked (credentials, endpoint); DltrainError in one line where
    it cannot be used."""
    try:
        check_storage(config)
        return open_storage(config)
    except (OSError, ValueError) as error:
        raise DltrainError(f"storage: {error}") from error


def resolver(config: StorageConfig) -> Callable[[str], tuple[pafs.FileSystem, str]]:
    """For a `storage` config: a function from a location (a local path or s3://bucket/key, read with the
    storage's S3 endpoint and region) to the filesystem holding it and its path there."""
    s3 = functools.cache(lambda: s3_filesystem(config.endpoint_url, config.region, config.retry_seconds))

    def resolve(location: str) -> tuple[pafs.FileSystem, str]:
        if location.startswith("s3://"):
            bucket, key = parse_s3_uri(location)
            return s3(), f"{bucket}/{key}".rstrip("/")
        if "://" in location and not location.startswith("file://"):
            raise ValueError(f"{scrub_urls(location)}: expected a local path or s3://bucket/key")
        return pafs.LocalFileSystem(), str(Path(location.removeprefix("file://")).expanduser().absolute())

    return resolve
