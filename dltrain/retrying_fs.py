"""A pyarrow filesystem that rides out storage outages: every call is retried while the store is unreachable.

dltrain's own files and everything Ray Train and Ray Tune write (checkpoints, the controller's checkpoint-manager
snapshot, Tune's experiment state) go through the run's one pyarrow filesystem. Wrapping it here, once, makes all
of them retry the same way: a call that fails with a transient error (connection refused or reset, a timeout,
HTTP 5xx, throttling) is tried again with backoff until `retry_seconds` have passed since its first failure, and
then fails with StorageUnavailable, whose message names the store, the reason and the file. Errors that no retry
can fix (a missing file, rejected credentials, a missing bucket) fail at once, as before.

Whole operations are retried, never half of one: a file opened for writing is spooled locally and uploaded on
close, so a retry uploads it again from its start; a file opened for reading re-reads the failed range.
"""

import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

log = logging.getLogger(__name__)
T = TypeVar("T")

# What the AWS SDK (under pyarrow's S3FileSystem) reports for failures that a later attempt can get past.
_TRANSIENT = re.compile(
    r"AWS Error (NETWORK_CONNECTION|SERVICE_UNAVAILABLE|SLOW_DOWN|THROTTLING|INTERNAL_FAILURE|REQUEST_TIMEOUT)"
    r"|HTTP status 5\d\d|curlCode: \d+"
)
_FIRST_DELAY, _MAX_DELAY = 0.5, 5.0  # backoff between attempts, doubling: a restarted server is seen within 5 s
_SPOOL_BYTES = 64 * 1024 * 1024  # a file being written stays in memory up to this size, then in a temporary file
_COPY_CHUNK = 8 * 1024 * 1024


class StorageUnavailable(OSError):
    """The storage did not answer within the retry window. The message is one line naming store, cause and file."""


def unavailable_in(error: BaseException) -> StorageUnavailable | None:
    """The StorageUnavailable behind `error`, also where Ray passed it on as text (a worker's or controller's)."""
    if isinstance(error, StorageUnavailable):
        return error
    for line in str(error).splitlines():
        name, _, message = line.strip().partition(": ")
        if name.endswith(StorageUnavailable.__name__) and message:
            return StorageUnavailable(message)
    # Ray Train's ControllerError keeps the controller's own exception as `controller_failure`.
    cause = getattr(error, "controller_failure", None) or error.__cause__ or error.__context__
    return unavailable_in(cause) if isinstance(cause, BaseException) else None


def is_transient(error: BaseException) -> bool:
    """Whether a later attempt may succeed where `error` failed (an outage, not a mistake): pyarrow's errors, and
    boto3's for the requests pyarrow cannot make (conditional writes, whole-object reads)."""
    if isinstance(error, StorageUnavailable):
        return False
    if type(error).__module__.startswith("botocore."):
        return _boto_transient(error)
    return isinstance(error, OSError) and bool(_TRANSIENT.search(str(error)))


def _boto_transient(error: BaseException) -> bool:
    import botocore.exceptions

    if isinstance(error, (botocore.exceptions.ConnectionError, botocore.exceptions.ReadTimeoutError)):
        return True
    if isinstance(error, botocore.exceptions.ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or error.response.get("Error", {}).get("Code") in ("SlowDown", "Throttling")
    return False


def _reason(error: BaseException) -> str:
    text = str(error)
    if "Could not connect" in text or "curlCode: 7" in text:
        return "could not connect"
    if match := re.search(r"AWS Error (\w+)", text):
        return match[1].lower().replace("_", " ")
    return text.splitlines()[0]


class RetryingHandler(pafs.FileSystemHandler):
    """A FileSystemHandler for pyarrow's PyFileSystem that delegates to `inner`, retrying transient errors."""

    def __init__(self, inner: pafs.FileSystem, retry_seconds: float, where: str):
        self.inner, self.retry_seconds, self.where = inner, retry_seconds, where

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RetryingHandler) and (self.inner, self.where) == (other.inner, other.where)

    def __hash__(self) -> int:
        return hash(self.where)

    def retry(self, action: str, path: str, call: Callable[[], T], took_effect: Callable[[], bool] | None = None) -> T:
        """`call()`, tried again after transient errors until `retry_seconds` have passed since the first.

        A FileNotFoundError after a failed attempt counts as success where `took_effect()` says that attempt went
        through and only its answer was lost (a delete or a move).
        """
        deadline, delay, failed = None, _FIRST_DELAY, False
        while True:
            try:
                return call()
            except FileNotFoundError:
                if failed and took_effect is not None and took_effect():
                    return None  # type: ignore[return-value]
                raise
            except Exception as error:
                if not is_transient(error):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.retry_seconds
                    log.info("%s: %s while %s %s; retrying for up to %g s", self.where, _reason(error), action,
                             path, self.retry_seconds)  # fmt: skip
                if now >= deadline:
                    raise StorageUnavailable(
                        f"{self.where}: {_reason(error)} for {self.retry_seconds:g} s (storage.retry_seconds) "
                        f"while {action} {path}"
                    ) from error
                failed = True
                time.sleep(min(delay, deadline - now))
                delay = min(delay * 2, _MAX_DELAY)

    def get_type_name(self) -> str:
        return f"retrying+{self.inner.type_name}"

    def normalize_path(self, path: str) -> str:
        return self.inner.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.retry("looking up", ", ".join(paths), lambda: self.inner.get_file_info(paths))

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.retry("listing", selector.base_dir, lambda: self.inner.get_file_info(selector))

    def create_dir(self, path: str, recursive: bool) -> None:
        self.retry("creating", path, lambda: self.inner.create_dir(path, recursive=recursive))

    def delete_dir(self, path: str) -> None:
        self.retry("deleting", path, lambda: self.inner.delete_dir(path), took_effect=lambda: True)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.retry("emptying", path, lambda: self.inner.delete_dir_contents(path, missing_dir_ok=missing_dir_ok))

    def delete_root_dir_contents(self) -> None:
        self.retry("emptying", "/", lambda: self.inner.delete_dir_contents("/", accept_root_dir=True))

    def delete_file(self, path: str) -> None:
        self.retry("deleting", path, lambda: self.inner.delete_file(path), took_effect=lambda: True)

    def move(self, src: str, dest: str) -> None:
        def arrived() -> bool:
            return self.inner.get_file_info(dest).type != pafs.FileType.NotFound

        self.retry("moving", f"{src} to {dest}", lambda: self.inner.move(src, dest), took_effect=arrived)

    def copy_file(self, src: str, dest: str) -> None:
        self.retry("copying", f"{src} to {dest}", lambda: self.inner.copy_file(src, dest))

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.open_input_file(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return pa.PythonFile(_RetryingReader(self, path), mode="r")

    def open_output_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return pa.PythonFile(_SpooledUpload(self, path, metadata), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return self.retry("opening", path, lambda: self.inner.open_append_stream(path, metadata=metadata))


class _RetryingReader:
    """A file being read: each read is a range of the remote file, fetched again after a transient error."""

    def __init__(self, handler: RetryingHandler, path: str):
        self.handler, self.path = handler, path
        self.file = handler.retry("opening", path, lambda: handler.inner.open_input_file(path))
        self.size = self.file.size()
        self.position = 0
        self.closed = False

    def read(self, nbytes: int | None = None) -> bytes:
        count = self.size - self.position if nbytes is None or nbytes < 0 else min(nbytes, self.size - self.position)
        data = self.handler.retry("reading", self.path, lambda: self.file.read_at(count, self.position))
        self.position += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = {0: 0, 1: self.position, 2: self.size}[whence] + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.file.close()


class _SpooledUpload:
    """A file being written: spooled here, uploaded whole on close, from its start again after a transient error."""

    def __init__(self, handler: RetryingHandler, path: str, metadata: Any):
        self.handler, self.path, self.metadata = handler, path, metadata
        self.spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115 - closed by close()
        self.closed = False

    def write(self, data: bytes) -> int:
        return self.spool.write(data)

    def tell(self) -> int:
        return self.spool.tell()

    def flush(self) -> None:
        pass  # the upload happens on close

    def _upload(self) -> None:
        self.spool.seek(0)
        with self.handler.inner.open_output_stream(self.path, metadata=self.metadata) as stream:
            shutil.copyfileobj(self.spool, stream, _COPY_CHUNK)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.handler.retry("writing", self.path, self._upload)
        finally:
            self.spool.close()


def retrying(filesystem: pafs.FileSystem, retry_seconds: float, where: str) -> pafs.FileSystem:
    """`filesystem` with every call retried through outages for `retry_seconds`; `where` names it in errors."""
    return pafs.PyFileSystem(RetryingHandler(filesystem, retry_seconds, where))


def retried(filesystem: pafs.FileSystem, action: str, path: str, call: Callable[[], T]) -> T:
    """`call()` (a request made beside `filesystem`, to the same store), retried through outages as `filesystem`
    retries its own calls."""
    handler = getattr(filesystem, "handler", None)
    return handler.retry(action, path, call) if isinstance(handler, RetryingHandler) else call()


def with_retry_seconds(filesystem: pafs.FileSystem, retry_seconds: float) -> pafs.FileSystem:
    """The same store with another retry window; a filesystem that does not retry is returned as it is."""
    handler = getattr(filesystem, "handler", None)
    if not isinstance(handler, RetryingHandler):
        return filesystem
    return retrying(handler.inner, retry_seconds, handler.where)
