"""`dltrain models list [--json]`: every registered model with its newest version and its aliases; a folder of
models/ that does not read as a model is listed as unreadable, and the rest are listed."""

import argparse

from dltrain import formatting
from dltrain.cli.cells import moment, number
from dltrain.cli.options import add_storage_options, registry
from dltrain.registry import DELETED, READY, Registry
from dltrain.retrying_fs import StorageUnavailable


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add `models list`."""
    command = subcommands.add_parser("list", help="the registered models", description=__doc__)
    command.add_argument("--json", action="store_true", help="a JSON list, one object per model")
    add_storage_options(command)
    command.set_defaults(handler=run)


def _item(models: Registry, name: str) -> tuple[dict, list[str]]:
    """The listing's entry of model `name`, and its table row."""
    versions = models.versions(name)
    ready = [record for record in versions if record["status"] == READY]
    latest = ready[-1] if ready else None
    item = {
        "name": name,
        "versions": sum(record["status"] != DELETED for record in versions),
        "latest_version": latest and latest["version"],
        "latest_test_accuracy": latest and latest["metrics"].get("test_accuracy"),
        "latest_created": latest and latest["created"],
        "aliases": models.aliases(name),
    }
    row = [
        name, str(item["versions"]), str(item["latest_version"] or "-"), number(item["latest_test_accuracy"]),
        moment(item["latest_created"]),
        ", ".join(f"@{alias}={version}" for alias, version in item["aliases"].items()) or "-",
    ]  # fmt: skip
    return item, row


def run(args: argparse.Namespace) -> None:
    """Print one row per model: versions, the newest READY one, its test accuracy and time, and the aliases; then a
    line for each folder of models/ that does not read as a model (a stray folder, a corrupt record)."""
    models = registry(args)
    items, rows, unreadable = [], [], {}
    for name in models.names():
        try:
            item, row = _item(models, name)
        except StorageUnavailable:
            raise
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as error:  # what a bad record raises
            unreadable[name] = next(iter(str(error).strip().splitlines()), type(error).__name__)
            continue
        items.append(item)
        rows.append(row)
    if args.json:
        keys = ("versions", "latest_version", "latest_test_accuracy", "latest_created", "aliases")
        bad = [{"name": name, **dict.fromkeys(keys), "unreadable": why} for name, why in unreadable.items()]
        print(formatting.to_json(items + bad))
        return
    if not items and not unreadable:
        print(f"no registered models in {models.storage.uri} (dltrain models register RUN_ID --name NAME)")
        return
    if rows:
        print("\n".join(formatting.table(["name", "versions", "latest", "test_acc", "registered", "aliases"], rows)))
    for name, why in unreadable.items():
        print(f"{models.storage.uri_of('models', name)}: unreadable ({why})")
