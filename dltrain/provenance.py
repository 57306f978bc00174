"""What a run records so that it can be understood and repeated: the command line (secrets redacted), the git
commit of dltrain's code when it runs from a checkout, and the md5s of the data set's files."""

import subprocess
from pathlib import Path
from typing import Any

from dltrain.data.dataset import DataSet
from dltrain.runs import redact

_GIT_TIMEOUT_S = 10


def git_commit(folder: Path) -> dict[str, Any] | None:
    """{commit, dirty} of the git checkout holding `folder`; None where it is not in one (or git is missing)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=_GIT_TIMEOUT_S
        )
        if head.returncode != 0:
            return None
        changes = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=_GIT_TIMEOUT_S,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(changes.stdout.strip())}


def command_line(overrides: list[str]) -> str:
    """`python -m dltrain key=value ...`, with the values of secret-looking keys replaced by ***."""
    shown = []
    for override in overrides:
        key, equals, value = override.partition("=")
        shown.append(f"{key}={redact({key.rsplit('.', 1)[-1]: value}).popitem()[1]}" if equals else override)
    return " ".join(["python -m dltrain", *shown])


def provenance(data: DataSet, overrides: list[str], rerun_of: str | None = None) -> dict[str, Any]:
    """The provenance.json of a run on the data set `data`, started with Hydra `overrides` (a rerun: of run
    `rerun_of`)."""
    import dltrain

    return {
        "command": command_line(overrides),
        "rerun_of": rerun_of,
        "git": git_commit(Path(dltrain.__file__).parent),
        "data_md5": data.files_md5,  # Fashion-MNIST's files (verified) or the Parquet shards read
    }
