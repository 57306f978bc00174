"""`dltrain runs show ID [--json]`: one run's status, times and error, the config keys that differ from the
defaults, its per-epoch table, its summary and its files."""

import argparse
from typing import Any

from dltrain import formatting
from dltrain.cli.cells import cell, moment
from dltrain.cli.options import add_run_command, run_store
from dltrain.errors import one_line_errors
from dltrain.overview import overview, read, run_named
from dltrain.search_space import flatten

EPOCH_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds", "samples_per_second")


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add `runs show`."""
    command = add_run_command(subcommands, "show", "one run in full", __doc__, run)
    command.add_argument("--json", action="store_true", help="everything as one JSON object")


def _defaults() -> dict[str, Any]:
    """The flattened config `python -m dltrain` runs with no overrides."""
    from dltrain import config, driver  # Hydra: only for `runs show`

    return flatten(config.to_mapping(config.resolve(driver.compose([]))))


def config_changes(saved: dict) -> dict[str, dict[str, Any]]:
    """The keys of a saved config whose value is not the default's: {key: {"value": ..., "default": ...}}."""
    defaults = _defaults()
    return {
        key: {"value": value, "default": defaults.get(key)}
        for key, value in flatten(saved).items()
        if key not in defaults or defaults[key] != value
    }


def details(args: argparse.Namespace) -> dict[str, Any]:
    """Everything `runs show` prints."""
    selected = run_named(run_store(args), args.run_id)
    with one_line_errors():  # a file of the run that does not read
        files = read(selected)
    return {
        "overview": overview(selected, files),
        "status": files["status"],
        "config_changes": config_changes(files["config"]),
        "epochs": files["history"],
        "summary": files["summary"] or None,
        "files": selected.storage.list_files(selected.path),
    }


def run(args: argparse.Namespace) -> None:
    """Print the run's details as text, or as JSON."""
    found = details(args)
    if args.json:
        print(formatting.to_json(found))
        return
    item, status = found["overview"], found["status"]
    lines = [
        f"{item['kind']} {item['id']}  {item['status']}  -> {item['uri']}",
        f"  model {item['model']}  dataset {item['dataset']}  workers {item['workers']}",
        f"  created {moment(status.get('created'))}  started {moment(item['started'])}  "
        f"ended {moment(item['ended'])}  duration {formatting.duration(item['duration_seconds'])}",
    ]
    if item["error"]:
        lines.append(f"  error: {item['error']}")
    changes = found["config_changes"]
    if changes:
        lines.append("config, where it differs from the defaults:")
        rows = [[key, cell(change["value"]), cell(change["default"])] for key, change in changes.items()]
        lines += formatting.table(["key", "value", "default"], rows, indent="  ")
    else:
        lines.append("config: the defaults")
    if found["epochs"]:
        columns = [column for column in EPOCH_COLUMNS if column in found["epochs"][0]]
        lines.append("epochs:")
        lines += formatting.table(columns, [[cell(row[c]) for c in columns] for row in found["epochs"]], "  ")
    if found["summary"]:
        lines.append("summary: " + "  ".join(f"{key} {cell(value)}" for key, value in found["summary"].items()
                                            if not isinstance(value, dict)))  # fmt: skip
    lines.append(f"files ({len(found['files'])}):")
    lines += [f"  {path}  {size:,} B" for path, size in sorted(found["files"].items())]
    print("\n".join(lines))
