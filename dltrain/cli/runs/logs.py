"""`dltrain runs logs ID [--worker N] [--follow]`: the driver's log, or a worker's (every attempt of that rank)."""

import argparse
import sys
import time

from dltrain.cli.options import add_run_command, run_store
from dltrain.errors import DltrainError
from dltrain.overview import run_named
from dltrain.runs import ENDED, Run

FOLLOW_EVERY_S = 2.0  # --follow: how often the run folder is read for more


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add `runs logs`."""
    command = add_run_command(subcommands, "logs", "a run's driver or worker log", __doc__, run)
    command.add_argument("--worker", type=int, metavar="N", help="worker N's log instead of the driver's")
    command.add_argument("--follow", action="store_true", help="go on printing what is added until the run ends")


def _log_files(selected: Run, worker: int | None) -> list[str]:
    """The run folder's log files to print, oldest attempt first (workers upload theirs at every epoch's end;
    the driver, when the run ends)."""
    names = sorted(selected.storage.list_files(f"{selected.path}/logs"))
    if worker is None:
        return [name for name in names if name == "driver.log"]
    return [name for name in names if name.startswith(f"worker-{worker}-pid")]


def run(args: argparse.Namespace) -> None:
    """Print the log (and, with --follow, what is added to it until the run has ended)."""
    selected = run_named(run_store(args), args.run_id)
    printed: dict[str, int] = {}  # file -> bytes printed
    while True:
        ended = selected.status()["status"] in ENDED  # read first: what the run wrote before it ended is printed
        files = _log_files(selected, args.worker)
        if not files and not args.follow:
            raise DltrainError(f"run {selected.id} has no {_which(args.worker)} log in {selected.uri}/logs yet")
        for name in files:
            data = selected.storage.read_bytes(f"{selected.path}/logs/{name}", printed.get(name, 0))
            if data and len(files) > 1 and name not in printed:
                print(f"== {name} ==", flush=True)  # several attempts of one rank: say where each begins
            sys.stdout.write(data.decode(errors="replace"))
            sys.stdout.flush()
            printed[name] = printed.get(name, 0) + len(data)
        if not args.follow or ended:
            return
        time.sleep(FOLLOW_EVERY_S)


def _which(worker: int | None) -> str:
    return (
        "driver (it is stored when the run ends; --worker 0 shows rank 0's)" if worker is None else f"worker {worker}"
    )
