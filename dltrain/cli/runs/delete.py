"""`dltrain runs delete ID... [--yes] [--force]`: remove runs' whole folders, on local storage and on S3."""

import argparse

from dltrain.cli.options import add_storage_options, confirmed, run_store
from dltrain.errors import DltrainError
from dltrain.overview import run_named
from dltrain.runs import LIVE, observed_status


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add `runs delete`."""
    command = subcommands.add_parser("delete", help="remove runs and everything in their folders", description=__doc__)
    command.add_argument("run_ids", metavar="ID", nargs="+", help="run ids (a sweep's id removes its own folder)")
    command.add_argument("--yes", action="store_true", help="do not ask (needed where there is no terminal to ask)")
    command.add_argument("--force", action="store_true", help="also a PENDING or RUNNING run (its driver may still "
                         "write)")  # fmt: skip
    add_storage_options(command)
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Check every id first (nothing is removed if one is bad), ask, mark each run as being deleted (which a
    resume then refuses), then remove each folder."""
    store = run_store(args)
    runs = [run_named(store, run_id) for run_id in dict.fromkeys(args.run_ids)]
    live = [f"{selected.id} {status}" for selected in runs if (status := observed_status(selected.status())) in LIVE]
    if live and not args.force:
        raise DltrainError(f"{', '.join(live)}: stop it first (or --force); nothing was deleted")
    if not confirmed(args, f"delete {len(runs)} run(s) and all their files from {store.storage.uri}?"):
        return
    marked = []
    try:
        for selected in runs:  # a driver may have started (or resumed) one since the check
            selected.mark_deleting(args.force)
            marked.append(selected)
    except ValueError as error:
        for selected in marked:
            selected.unmark_deleting()
        raise DltrainError(f"{error}; nothing was deleted") from None
    for selected in runs:
        store.storage.filesystem.delete_dir(selected.path)
        print(f"deleted {selected.id} ({selected.uri})", flush=True)
