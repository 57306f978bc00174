"""`dltrain runs list [--status S] [--sweep ID] [--limit N] [--json]`: the runs in a storage, newest first; a run
whose files do not read is listed UNREADABLE (with the reason in --json's error), and the rest are listed."""

import argparse

from dltrain import formatting
from dltrain.api.runs import list_runs
from dltrain.cli.cells import moment, number
from dltrain.cli.options import add_storage_options, storage_options
from dltrain.errors import DltrainError
from dltrain.overview import SHOWN_STATUSES
from dltrain.runs import check_run_id

COLUMNS = ["id", "model", "dataset", "status", "workers", "epochs", "best val_acc", "test_acc", "started", "duration"]


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add `runs list`."""
    command = subcommands.add_parser("list", help="the runs, newest first", description=__doc__)
    command.add_argument("--status", choices=SHOWN_STATUSES, help="only runs with this status")
    command.add_argument("--sweep", metavar="ID", help="only the trials of this sweep")
    command.add_argument("--limit", type=int, metavar="N", help="at most N runs")
    command.add_argument("--json", action="store_true", help="a JSON list of the runs' overviews")
    add_storage_options(command)
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Print the runs as a table, or as JSON."""
    if args.limit is not None and args.limit < 1:
        raise DltrainError(f"--limit {args.limit}: expected an integer >= 1")
    if args.sweep is not None:
        try:
            check_run_id(args.sweep)
        except ValueError as error:
            raise DltrainError(f"--sweep: {error}") from None
    overviews = list_runs(**storage_options(args), status=args.status, sweep=args.sweep, limit=args.limit)
    if args.json:
        print(formatting.to_json(overviews))
        return
    rows = [
        [
            item["id"], item["model"], item["dataset"], item["status"], item["workers"],
            "-" if item["epochs_done"] is None else f"{item['epochs_done']}/{item['epochs']}",
            number(item["best_val_accuracy"]), number(item["test_accuracy"]), moment(item["started"]),
            formatting.duration(item["duration_seconds"]),
        ]
        for item in overviews
    ]  # fmt: skip
    print("\n".join(formatting.table(COLUMNS, rows)) if rows else "no runs")
