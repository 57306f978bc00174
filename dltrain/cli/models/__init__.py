"""`dltrain models ...`: the model registry of a storage; one module per subcommand."""

import argparse

from dltrain.cli.models import alias, delete, download, listing, register_run, show

SUBCOMMANDS = (register_run, listing, show, alias, download, delete)


def register(commands: argparse._SubParsersAction) -> None:
    """Add `models` and its subcommands."""
    models = commands.add_parser("models", help="register runs' models as versions, alias, download and delete them")
    subcommands = models.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    for subcommand in SUBCOMMANDS:
        subcommand.register(subcommands)
