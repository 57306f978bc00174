"""`dltrain data ...`: data sets; one module per subcommand."""

import argparse

from dltrain.cli.data import prepare

SUBCOMMANDS = (prepare,)


def register(commands: argparse._SubParsersAction) -> None:
    """Add `data` and its subcommands."""
    data = commands.add_parser("data", help="prepare data sets for training: dltrain data prepare SOURCE DEST")
    subcommands = data.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    for subcommand in SUBCOMMANDS:
        subcommand.register(subcommands)
