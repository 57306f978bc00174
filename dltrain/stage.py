"""A worker's stage: a local folder for its checkpoint, TensorBoard events, log and temporary files.

It is removed when the worker ends. A process that is killed (SIGKILL, a lost node, the OOM killer) cannot remove
what it made, so each driver and worker first removes what dead ones left: the worker stages, the embedded Ray's
session folders and the driver logs are named `dltrain-<what>-pid<pid>-<random>`.
"""

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

_OWNER = re.compile(r"^dltrain-.+-pid(\d+)-[^-]+$")  # e.g. dltrain-<run id>-worker<rank>-pid<pid>-<mkdtemp's suffix>


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this machine (another user's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def temporary_name(what: str) -> str:
    """`dltrain-<what>-pid<this process>-`: a prefix for tempfile that remove_left_behind() understands."""
    return f"dltrain-{what}-pid{os.getpid()}-"


def remove_left_behind(folder: Path | None = None) -> list[Path]:
    """Remove what dead dltrain processes left in `folder` (the system's temporary folder); returns it."""
    removed = []
    for path in Path(folder or tempfile.gettempdir()).glob("dltrain-*-pid*-*"):
        owner = _OWNER.match(path.name)
        if owner and not pid_alive(int(owner[1])):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def stage(label: str) -> Iterator[Path]:
    """A new stage named for `label` and this process, which is also the process's temporary folder while the
    block runs (TensorFlow's autograph writes a file there for every function it traces); removed at the end."""
    remove_left_behind()
    folder = Path(tempfile.mkdtemp(prefix=temporary_name(label)))
    (folder / "tmp").mkdir()
    saved = tempfile.tempdir
    tempfile.tempdir = str(folder / "tmp")
    try:
        yield folder
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(folder, ignore_errors=True)
