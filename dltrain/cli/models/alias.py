"""`dltrain models alias NAME N ALIAS`: point ALIAS (e.g. production) at version N of NAME, moving it if it was
elsewhere; NAME@ALIAS then addresses that version (in MLflow's registry too, where the version's run was
mirrored)."""

import argparse

from dltrain.cli.options import add_storage_options, one_line_errors, registry
from dltrain.tracking import mirror_alias


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add `models alias`."""
    command = subcommands.add_parser("alias", help="point an alias at a version", description=__doc__)
    command.add_argument("name", metavar="NAME")
    command.add_argument("version", metavar="N", type=int)
    command.add_argument("alias", metavar="ALIAS")
    add_storage_options(command)
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Move the alias and say where it pointed before; mirror it to MLflow where the version's run was."""
    models = registry(args)
    with one_line_errors():
        before = models.set_alias(args.name, args.version, args.alias)
    moved = f" (was version {before})" if before not in (None, args.version) else ""
    print(f"{args.name}@{args.alias} -> version {args.version}{moved}")
    with one_line_errors():
        saved = models.config(args.name, args.version)
    mirror_alias(saved, args.name, args.version, args.alias)
