"""`dltrain models show NAME[:N|@alias] [--json]`: a model's versions and aliases, or one version in full."""

import argparse

from dltrain import formatting
from dltrain.cli.cells import moment, number
from dltrain.cli.options import add_storage_options, registry
from dltrain.errors import one_line_errors
from dltrain.registry import parse_reference


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add `models show`."""
    command = subcommands.add_parser("show", help="a model's versions, or one version", description=__doc__)
    command.add_argument("reference", metavar="NAME[:N|@ALIAS]", help="a model, or one of its versions")
    command.add_argument("--json", action="store_true", help="as JSON")
    add_storage_options(command)
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """NAME: every version as a table, and the aliases; NAME:N or NAME@alias: that version's record."""
    models = registry(args)
    with one_line_errors():
        name, version, alias = parse_reference(args.reference)
        if version is None and alias is None:
            found = {"name": name, "versions": models.versions(name), "aliases": models.aliases(name)}
        else:
            record = models.get(args.reference)
            found = record | {"uri": models.uri_of(record["name"], record["version"])}
    if args.json:
        print(formatting.to_json(found))
    elif "versions" in found:
        aliases = found["aliases"]
        rows = [
            [str(record["version"]), record["status"], record["run_id"], number(record["metrics"].get("test_accuracy")),
             moment(record["created"]), " ".join(f"@{a}" for a, v in aliases.items() if v == record["version"]) or "-",
             " ".join(f"{key}={value}" for key, value in record["tags"].items()) or "-"]
            for record in found["versions"]
        ]  # fmt: skip
        print(f"model {name}: {len(rows)} version(s)")
        print("\n".join(formatting.table(["version", "status", "run", "test_acc", "registered", "aliases", "tags"],
                                         rows, indent="  ")))  # fmt: skip
    else:
        provenance = found["provenance"] or {}
        lines = [
            f"{found['name']}:{found['version']}  {found['status']}  -> {found['uri']}",
            f"  from run {found['run_id']} ({found['source']}), registered {moment(found['created'])}",
            "  metrics: " + "  ".join(f"{key} {number(value)}" for key, value in found["metrics"].items()),
            "  tags: " + (" ".join(f"{key}={value}" for key, value in found["tags"].items()) or "-"),
            "  libraries: " + " ".join(f"{key} {value}" for key, value in found["library_versions"].items()),
            f"  command: {provenance.get('command', '-')}",
            f"  git: {_git(provenance.get('git'))}",
            "  data md5: " + (" ".join(f"{n} {m}" for n, m in provenance.get("data_md5", {}).items()) or "-"),
        ]
        print("\n".join(lines))


def _git(git: dict | None) -> str:
    if not git:
        return "- (not run from a git checkout)"
    return git["commit"] + (" (with uncommitted changes)" if git["dirty"] else "")
