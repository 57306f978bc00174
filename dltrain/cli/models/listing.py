"""`dltrain models list [--json]`: every registered model with its newest version and its aliases."""

import argparse

from dltrain import formatting
from dltrain.cli.cells import moment, number
from dltrain.cli.options import add_storage_options, one_line_errors, registry
from dltrain.registry import DELETED, READY


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add `models list`."""
    command = subcommands.add_parser("list", help="the registered models", description=__doc__)
    command.add_argument("--json", action="store_true", help="a JSON list, one object per model")
    add_storage_options(command)
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Print one row per model: versions, the newest READY one, its test accuracy and time, and the aliases."""
    models = registry(args)
    items = []
    with one_line_errors():
        for name in models.names():
            versions = models.versions(name)
            ready = [record for record in versions if record["status"] == READY]
            latest = ready[-1] if ready else None
            items.append({
                "name": name,
                "versions": sum(record["status"] != DELETED for record in versions),
                "latest_version": latest and latest["version"],
                "latest_test_accuracy": latest and latest["metrics"].get("test_accuracy"),
                "latest_created": latest and latest["created"],
                "aliases": models.aliases(name),
            })  # fmt: skip
    if args.json:
        print(formatting.to_json(items))
        return
    if not items:
        print(f"no registered models in {models.storage.uri} (dltrain models register RUN_ID --name NAME)")
        return
    header = ["name", "versions", "latest", "test_acc", "registered", "aliases"]
    rows = [
        [
            item["name"], str(item["versions"]), str(item["latest_version"] or "-"),
            number(item["latest_test_accuracy"]), moment(item["latest_created"]),
            ", ".join(f"@{alias}={version}" for alias, version in item["aliases"].items()) or "-",
        ]
        for item in items
    ]  # fmt: skip
    print("\n".join(formatting.table(header, rows)))
