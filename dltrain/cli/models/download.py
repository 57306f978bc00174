"""`dltrain models download NAME[:N|@alias] DEST`: copy a registered version's model/ folder (model.keras, its
test metrics and confusion matrix) to a local folder."""

import argparse
from pathlib import Path

from dltrain.cli.options import add_storage_options, registry
from dltrain.errors import DltrainError, one_line_errors


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add `models download`."""
    command = subcommands.add_parser("download", help="copy a version's model to a local folder", description=__doc__)
    command.add_argument("reference", metavar="NAME[:N|@ALIAS]", help="NAME alone: its newest version")
    command.add_argument("destination", metavar="DEST", type=Path, help="a local folder that does not exist yet")
    add_storage_options(command)
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Resolve the reference, then copy: DEST appears whole or not at all."""
    destination = args.destination.absolute()
    if destination.exists():
        raise DltrainError(f"{destination} exists: give a folder that does not exist yet")
    models = registry(args)
    with one_line_errors():
        record = models.get(args.reference)
    files = models.storage.download(models.model_path(record), destination)
    print(f"downloaded {record['name']}:{record['version']} ({files} files) to {destination}")
