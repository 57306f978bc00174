"""What a run records so that it can be understood and repeated: the command line (secrets redacted), the git
commit of dltrain's code when it runs from a checkout, and the md5s of the data set's files."""

import re
import subprocess
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser

from dltrain.data.dataset import DataSet
from dltrain.redaction import Scrubber, redact

_GIT_TIMEOUT_S = 10
_UNQUOTED = re.compile(r"[\w+\-./:*@?%]+")  # what a Hydra value may hold without quotes


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


def _hydra_text(value: Any) -> str:
    """`value` as a Hydra override writes it."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_hydra_text(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(map(_hydra_text, value)) + "]"
    text = str(value)
    return text if _UNQUOTED.fullmatch(text) else "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def command_line(overrides: list[str], scrub: Scrubber) -> str:
    """`python -m dltrain key=value ...`, with the values of secret-looking keys replaced by *** (inside mappings and
    lists too, such as `+trainer.callbacks.x={...}`), then what `scrub` hides (the run's redacted values, URLs'
    credentials) hidden wherever it is."""
    parser = OverridesParser.create()
    shown = []
    for override in overrides:
        key, equals, text = override.partition("=")
        if equals:
            try:
                value = parser.parse_override(override).value()
            except Exception:  # not one Hydra can parse (it would not have run): as it was given
                value = text
            redacted = redact({key.rsplit(".", 1)[-1]: value}).popitem()[1]
            text = text if redacted == value else _hydra_text(redacted)
        shown.append(scrub(f"{key}={text}" if equals else override))
    return " ".join(["python -m dltrain", *shown])


def provenance(data: DataSet, command: str, rerun_of: str | None = None, trial_of: str | None = None) -> dict[str, Any]:
    """The provenance.json of a run on the data set `data`, started by `command` (command_line: a sweep's trial
    records its sweep's, and the sweep as `trial_of`; a rerun records the run it repeats as `rerun_of`)."""
    import dltrain

    return {
        "command": command,
        "rerun_of": rerun_of,
        **({"trial_of": trial_of} if trial_of else {}),
        "git": git_commit(Path(dltrain.__file__).parent),
        "data_md5": data.files_md5,  # Fashion-MNIST's files (verified) or the Parquet shards read
    }
