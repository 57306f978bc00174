"""`dltrain runs metrics ID [--csv]`: a run's metrics history, one row per epoch, every column."""

import argparse
import csv
import sys

from dltrain import formatting
from dltrain.cli.cells import cell
from dltrain.cli.options import add_run_command, run_store
from dltrain.overview import run_named


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add `runs metrics`."""
    command = add_run_command(subcommands, "metrics", "a run's per-epoch metrics", __doc__, run)
    command.add_argument("--csv", action="store_true", help="CSV with a header row, for a spreadsheet or pandas")


def run(args: argparse.Namespace) -> None:
    """Print the history as a table, or as CSV (full precision)."""
    rows = run_named(run_store(args), args.run_id).metrics()
    columns = list(rows[0]) if rows else ["epoch"]
    if args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    if not rows:
        print("no epoch has ended yet")
        return
    print("\n".join(formatting.table(columns, [[cell(row[column]) for column in columns] for row in rows])))
