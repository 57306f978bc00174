"""Runs' loss and accuracy curves drawn into a PNG file named on the command line (`runs plot`, `runs compare`)."""

import os
import tempfile
from pathlib import Path

from dltrain import plots
from dltrain.config import saved_overview
from dltrain.errors import DltrainError
from dltrain.runs import Run


def check_output(path: Path) -> Path:
    """`path` if it names a PNG in an existing folder; DltrainError in one line otherwise."""
    if path.suffix.lower() != ".png":
        raise DltrainError(f"-o {path}: the plot is a PNG: give a FILE.png")
    if not path.absolute().parent.is_dir():
        raise DltrainError(f"-o {path}: no folder {path.absolute().parent}")
    return path


def write_curves(runs: list[Run], path: Path) -> None:
    """Draw the runs' curves into `path`, which appears whole or not at all."""
    histories = {}
    for selected in runs:
        if saved_overview(selected.config()).sweep:
            raise DltrainError(f"{selected.id} is a sweep: its plot is {selected.uri}/plots/trials.png")
        histories[selected.id] = selected.metrics()
        if not histories[selected.id]:
            raise DltrainError(f"run {selected.id} has no finished epoch to plot yet")
    title = f"run {runs[0].id}" if len(runs) == 1 else f"{len(runs)} runs"
    png = plots.curves(histories, title)
    handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.absolute().parent)
    with os.fdopen(handle, "wb") as file:
        file.write(png)
    os.replace(partial, path)
