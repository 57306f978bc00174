"""Sending a process's native output (TensorFlow's C++ logs, absl) to a log file instead of the console."""

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path


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
