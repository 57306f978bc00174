"""Sending a process's native output (TensorFlow's C++ logs, absl) to a log file instead of the console, and keeping
a run's secrets (redaction.py) out of the log records and log files dltrain writes, stores and relays."""

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from dltrain.redaction import Scrubber

if TYPE_CHECKING:  # pyarrow, not for `python -m dltrain --help`
    from dltrain.storage import Storage


@contextlib.contextmanager
def output_to(log_file: Path, fds: tuple[int, ...] = (1, 2), sys_stdout: bool = False) -> Iterator[None]:
    """Point file descriptors `fds` (stdout and stderr by default) at `log_file`, appending, then restore them;
    with `sys_stdout`, Python's sys.stdout too (where fd 1 stays another writer's, the console's)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    with open(log_file, "a", buffering=1) as log:
        for fd in fds:
            os.dup2(log.fileno(), fd)
        try:
            with contextlib.redirect_stdout(log) if sys_stdout else contextlib.nullcontext():
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip(fds, saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)


class Scrubbing(logging.Filter):
    """A handler's filter that hides `scrub`'s secrets in each record's message and traceback before it is written
    (the record is changed: every handler then writes it scrubbed)."""

    def __init__(self, scrub: Scrubber):
        super().__init__()
        self.scrub = scrub

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self.scrub(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        return True


@contextlib.contextmanager
def scrubbing(scrub: Scrubber) -> Iterator[None]:
    """While the block runs, every handler of the root logger (the console's, the driver log's) writes records with
    `scrub`'s secrets hidden."""
    handlers, hiding = list(logging.getLogger().handlers), Scrubbing(scrub)
    for handler in handlers:
        handler.addFilter(hiding)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(hiding)


def store_logs(storage: "Storage", folder: Path, destination: str, scrub: Scrubber) -> None:
    """Copy the log files of the local `folder` into `destination` on `storage`, each written whole, with `scrub`'s
    secrets hidden (a library's own warning may print what the config holds)."""
    for log in sorted(folder.iterdir()):
        if log.is_file():
            storage.write_bytes(f"{destination}/{log.name}", scrub.bytes(log.read_bytes()))
