"""`dltrain runs plot ID... -o FILE.png`: the loss and accuracy curves of one or more runs, overlaid."""

import argparse
from pathlib import Path

from dltrain.cli.curves import check_output, write_curves
from dltrain.cli.options import add_storage_options, run_store
from dltrain.overview import run_named


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add `runs plot`."""
    command = subcommands.add_parser("plot", help="overlay runs' training curves in a PNG", description=__doc__)
    command.add_argument("run_ids", metavar="ID", nargs="+", help="run ids, as `dltrain runs list` shows them")
    command.add_argument("-o", "--output", metavar="FILE.png", type=Path, required=True, help="the PNG to write")
    add_storage_options(command)
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Check every id and the output first, then draw."""
    output = check_output(args.output)
    store = run_store(args)
    runs = [run_named(store, run_id) for run_id in dict.fromkeys(args.run_ids)]
    write_curves(runs, output)
    print(f"wrote the curves of {len(runs)} run(s) to {output}")
