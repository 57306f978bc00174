"""`dltrain models alias NAME N ALIAS`: point ALIAS (e.g. production) at version N of NAME, moving it if it was
elsewhere; NAME@ALIAS then addresses that version (in MLflow's registry too, where the version's run was
mirrored)."""

import argparse

from dltrain.api.models import set_alias
from dltrain.cli.options import add_storage_options, storage_options


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add `models alias`."""
    command = subcommands.add_parser("alias", help="point an alias at a version", description=__doc__)
    command.add_argument("name", metavar="NAME")
    command.add_argument("version", metavar="N", type=int)
    command.add_argument("alias", metavar="ALIAS")
    add_storage_options(command)
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Move the alias (dltrain.set_alias) and say where it pointed before."""
    before = set_alias(args.name, args.version, args.alias, **storage_options(args))
    moved = f" (was version {before})" if before not in (None, args.version) else ""
    print(f"{args.name}@{args.alias} -> version {args.version}{moved}")
