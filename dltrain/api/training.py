"""Training from Python: `dltrain.train(overrides, storage=...)` composes the config as `python -m dltrain` does,
trains in this process (a notebook's kernel too) and hands back the run."""

from collections.abc import Sequence

from dltrain.api.runs import RunHandle
from dltrain.api.store import StorageLocation, storage_overrides
from dltrain.errors import DltrainError
from dltrain.runs import Run
from dltrain.storage import open_checked


def _one_line(error: Exception) -> str:
    """Hydra's message about the overrides in one line: its lines joined, a list of options by commas, without the
    config search path and the link to Hydra's docs."""
    text = str(error).split("\nConfig search path:")[0]
    parts: list[str] = []
    for line in text.splitlines():
        if line.startswith("\t") and parts:  # an option of the list the line before announces
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line.strip()
        elif line.strip() and not line.startswith("See https://"):
            parts.append(line.strip().rstrip("."))
    return "; ".join(parts)


def train(
    overrides: Sequence[str] = (),
    *,
    storage: StorageLocation = None,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> RunHandle:
    """Train as `python -m dltrain *overrides` does (a run, a sweep, resume=ID or rerun=ID), with its runs in
    `storage` (a folder or s3://bucket/prefix, with `endpoint_url` and `region` for S3; None: the config's
    storage.uri), and return the run (or sweep) once it has ended, COMPLETED or STOPPED (`dltrain runs stop`).

    The run prints its progress as the command does. Keras keeps the backend it was first imported with: a process
    trains on one framework, and a job on another one fails. DltrainError in one line for a bad override or
    config, missing data, or a run that FAILED (its status and logs are in its folder); KeyboardInterrupt (a
    notebook's interrupt) stops the run, which is then STOPPED and can be resumed (resume=ID)."""
    from hydra.errors import HydraException  # Hydra, Keras and Ray: only once something trains

    from dltrain import driver

    if isinstance(overrides, str):
        raise DltrainError(f"overrides={overrides!r}: expected a list of key=value strings")
    given = [*overrides, *storage_overrides(storage, endpoint_url, region)]
    try:
        cfg = driver.compose(given)
    except (HydraException, ValueError) as error:
        raise DltrainError(f"overrides: {_one_line(error)}") from None
    job, summary = driver.train(cfg, given)
    run_id = summary.get("sweep_id") or summary["run_id"]  # a sweep's summary, or a run's
    return RunHandle(Run(open_checked(job.storage), run_id))
