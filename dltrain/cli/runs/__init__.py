"""`dltrain runs ...`: the runs in a storage; one module per subcommand."""

import argparse

from dltrain.cli.runs import compare, delete, download, listing, logs, metrics, plot, show, stop

SUBCOMMANDS = (listing, show, logs, metrics, compare, plot, stop, download, delete)


def register(commands: argparse._SubParsersAction) -> None:
    """Add `runs` and its subcommands."""
    runs = commands.add_parser("runs", help="list, inspect, compare, stop, download and delete runs: dltrain runs list")
    subcommands = runs.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    for subcommand in SUBCOMMANDS:
        subcommand.register(subcommands)
