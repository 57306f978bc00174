"""`dltrain models register RUN_ID --name NAME [--tag k=v ...] [--alias A]`: make a completed run's final model
version N of NAME: an immutable copy of the model, config, metrics, summary and provenance in the registry; and a
version of NAME in MLflow's registry too, where the run was mirrored (its tracking.mlflow_uri)."""

import argparse

from dltrain.api.models import register_model
from dltrain.cli.options import add_storage_options, storage_options
from dltrain.errors import one_line_errors
from dltrain.registry import parse_tags


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add `models register`."""
    command = subcommands.add_parser("register", help="a run's final model as a new version", description=__doc__)
    command.add_argument("run_id", metavar="RUN_ID", help="a COMPLETED run, as `dltrain runs list` shows it")
    command.add_argument("--name", required=True, help="the model's name (letters, digits, _ . -)")
    command.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="a tag (repeatable)")
    command.add_argument("--alias", metavar="ALIAS", help="point this alias (e.g. production) at the new version")
    add_storage_options(command)
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Check the tags, then register (dltrain.register_model) and say where the version and the alias are."""
    with one_line_errors():
        tags = parse_tags(args.tag)
    record = register_model(args.run_id, args.name, tags=tags, alias=args.alias, **storage_options(args))
    print(f"registered {record['name']}:{record['version']} from run {record['run_id']} -> {record['uri']}")
    if args.alias:
        print(f"{record['name']}@{args.alias} -> version {record['version']}")
