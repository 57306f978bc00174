"""`dltrain runs compare ID ID... [-o FILE.png] [--json]`: the config keys in which runs differ and their final
metrics, side by side, and their curves overlaid in a PNG."""

import argparse
from pathlib import Path
from typing import Any

from dltrain import formatting
from dltrain.cli.cells import cell
from dltrain.cli.curves import check_output, write_curves
from dltrain.cli.options import add_storage_options, run_store
from dltrain.errors import DltrainError
from dltrain.overview import overview, read, run_named
from dltrain.search_space import flatten

_MISSING = "-"  # a key one run's config lacks (saved by an older dltrain)


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add `runs compare`."""
    command = subcommands.add_parser("compare", help="runs side by side: config differences, metrics, curves",
                                     description=__doc__)  # fmt: skip
    command.add_argument("run_ids", metavar="ID", nargs="+", help="two or more run ids")
    command.add_argument("-o", "--output", metavar="FILE.png", type=Path, default=Path("compare.png"),
                         help="where to draw the curves (default: compare.png here)")  # fmt: skip
    command.add_argument("--json", action="store_true", help="the comparison as one JSON object")
    add_storage_options(command)
    command.set_defaults(handler=run)


def comparison(runs: list, files: list[dict[str, Any]]) -> dict[str, Any]:
    """{runs: ids, config: {key: [value per run]} where they differ, metrics: {id: final metrics}}."""
    configs = [flatten(found["config"]) for found in files]
    keys = sorted(set().union(*configs))
    differing = {
        key: [config.get(key, _MISSING) for config in configs]
        for key in keys
        if len({repr(config.get(key, _MISSING)) for config in configs}) > 1 and not key.startswith("storage.")
    }
    metrics = {}
    for selected, found in zip(runs, files, strict=True):
        item, history = overview(selected, found), found["history"]
        metrics[selected.id] = {
            "status": item["status"],
            "epochs_done": item["epochs_done"],
            "best_val_accuracy": item["best_val_accuracy"],
            "last_val_accuracy": history[-1].get("val_accuracy") if history else None,
            "test_accuracy": item["test_accuracy"],
            "test_loss": found["summary"].get("test_loss"),
            "duration_seconds": item["duration_seconds"],
        }
    return {"runs": [selected.id for selected in runs], "config": differing, "metrics": metrics}


def run(args: argparse.Namespace) -> None:
    """Check the ids and the output, compare, draw the curves, print the comparison."""
    output = check_output(args.output)
    store = run_store(args)
    runs = [run_named(store, run_id) for run_id in dict.fromkeys(args.run_ids)]
    if len(runs) < 2:
        raise DltrainError("compare needs two or more different run ids")
    found = comparison(runs, [read(selected) for selected in runs])
    write_curves(runs, output)
    found["plot"] = str(output)
    if args.json:
        print(formatting.to_json(found))
        return
    ids = found["runs"]
    lines = ["config, where the runs differ:" if found["config"] else "config: the same in every run"]
    rows = [[key, *(cell(value) for value in values)] for key, values in found["config"].items()]
    lines += formatting.table(["key", *ids], rows, indent="  ") if rows else []
    lines.append("final metrics:")
    names = list(found["metrics"][ids[0]])
    rows = [
        [name.removesuffix("_seconds"), *(_metric(name, found["metrics"][run_id][name]) for run_id in ids)]
        for name in names
    ]
    lines += formatting.table(["metric", *ids], rows, indent="  ")
    lines.append(f"curves: {output}")
    print("\n".join(lines))


def _metric(name: str, value: Any) -> str:
    if name == "duration_seconds":
        return formatting.duration(value)
    return _MISSING if value is None else cell(value)
