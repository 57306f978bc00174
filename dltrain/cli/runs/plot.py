"""`dltrain runs plot ID... -o FILE.png`: the loss and accuracy curves of one or more runs, overlaid."""

import argparse
import os
import tempfile
from pathlib import Path

from dltrain import plots
from dltrain.cli.options import add_storage_options, run_store
from dltrain.cli.runs.overview import run_named
from dltrain.config import saved_overview
from dltrain.errors import DltrainError
from dltrain.runs import Run


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add `runs plot`."""
    command = subcommands.add_parser("plot", help="overlay runs' training curves in a PNG", description=__doc__)
    command.add_argument("run_ids", metavar="ID", nargs="+", help="run ids, as `dltrain runs list` shows them")
    command.add_argument("-o", "--output", metavar="FILE.png", type=Path, required=True, help="the PNG to write")
    add_storage_options(command)
    command.set_defaults(handler=run)


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


def run(args: argparse.Namespace) -> None:
    """Check every id and the output first, then draw."""
    output = check_output(args.output)
    store = run_store(args)
    runs = [run_named(store, run_id) for run_id in dict.fromkeys(args.run_ids)]
    write_curves(runs, output)
    print(f"wrote the curves of {len(runs)} run(s) to {output}")
