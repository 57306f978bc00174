"""`dltrain runs ...`: the runs in a storage; one module per subcommand."""

import argparse

from dltrain.cli.runs import listing, show

SUBCOMMANDS = (listing, show)


def register(commands: argparse._SubParsersAction) -> None:
    """Add `runs` and its subcommands."""
    runs = commands.add_parser("runs", help="list and inspect runs: dltrain runs list, dltrain runs show ID")
    subcommands = runs.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    for subcommand in SUBCOMMANDS:
        subcommand.register(subcommands)
