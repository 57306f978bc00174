"""`dltrain models delete NAME:N [--yes] [--force]`: remove one READY version; refused while an alias points at it.

A version still REGISTERING (a registration copying it, or one that died doing so) is removed only with --force;
a registration still under way then fails rather than make it READY."""

import argparse

from dltrain.cli.options import add_storage_options, confirmed, registry
from dltrain.errors import DltrainError, one_line_errors
from dltrain.registry import parse_reference


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add `models delete`."""
    command = subcommands.add_parser("delete", help="remove a version", description=__doc__)
    command.add_argument("reference", metavar="NAME:N", help="the version to remove")
    command.add_argument("--yes", action="store_true", help="do not ask (needed where there is no terminal to ask)")
    command.add_argument("--force", action="store_true", help="also a version still REGISTERING")
    add_storage_options(command)
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Check the reference, ask, remove."""
    with one_line_errors():
        name, version, _ = parse_reference(args.reference)
    if version is None:
        raise DltrainError(f"{args.reference!r}: give one version, NAME:N")
    if not confirmed(args, f"delete {name}:{version}?"):
        return
    with one_line_errors():
        registry(args).delete(name, version, args.force)
    print(f"deleted {name}:{version}")
