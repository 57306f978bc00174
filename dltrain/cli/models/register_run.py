"""`dltrain models register RUN_ID --name NAME [--tag k=v ...] [--alias A]`: make a completed run's final model
version N of NAME: an immutable copy of the model, config, metrics, summary and provenance in the registry; and a
version of NAME in MLflow's registry too, where the run was mirrored (its tracking.mlflow_uri)."""

import argparse

from dltrain.cli.options import add_storage_options, one_line_errors, registry, run_store
from dltrain.cli.runs.overview import run_named
from dltrain.registry import parse_tags
from dltrain.tracking import mirror_version


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
    """Check the name, tags and alias, register, then move the alias; mirror both to MLflow where the run was."""
    models = registry(args)
    with one_line_errors():
        tags = parse_tags(args.tag)
        record = models.register(run_named(run_store(args), args.run_id), args.name, tags, args.alias)
    print(f"registered {record['name']}:{record['version']} from run {record['run_id']} "
          f"-> {models.uri_of(record['name'], record['version'])}")  # fmt: skip
    if args.alias:
        print(f"{record['name']}@{args.alias} -> version {record['version']}")
    with one_line_errors():
        saved = models.config(record["name"], record["version"])
    mirror_version(saved, record, args.alias)
