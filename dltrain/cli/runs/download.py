"""`dltrain runs download ID DEST [--model-only]`: copy a run's folder (or its final model) to a local folder."""

import argparse
from pathlib import Path

from dltrain.cli.options import add_run_command, run_store
from dltrain.errors import DltrainError
from dltrain.overview import run_named


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add `runs download`."""
    command = add_run_command(subcommands, "download", "copy a run's files to a local folder", __doc__, run)
    command.add_argument("destination", metavar="DEST", type=Path, help="a local folder that does not exist yet")
    command.add_argument("--model-only", action="store_true", help="only model/ (the final model)")


def run(args: argparse.Namespace) -> None:
    """Copy the folder (or model/) to DEST, which appears whole or not at all."""
    selected = run_named(run_store(args), args.run_id)
    destination = args.destination.absolute()
    if destination.exists():
        raise DltrainError(f"{destination} exists: give a folder that does not exist yet")
    source = f"{selected.path}/model" if args.model_only else selected.path
    if not selected.storage.exists(f"{source}/model.keras" if args.model_only else source):
        raise DltrainError(f"run {selected.id} has no final model yet ({selected.uri}/model)")
    files = selected.storage.download(source, destination)
    print(f"downloaded {files} files of {selected.id} to {destination}")
