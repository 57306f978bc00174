"""`dltrain runs stop ID [--wait]`: ask a run, from any terminal or machine, to stop at its next epoch end.

The request is a file in the run folder; the run's rank 0 looks for it after each epoch, and the run ends STOPPED
with that epoch's checkpoint (no test evaluation, no final model). `resume=ID` continues it.
"""

import argparse
import getpass
import socket
import time

from dltrain.cli.options import add_run_command, run_store
from dltrain.config import saved_overview
from dltrain.errors import DltrainError
from dltrain.overview import run_named
from dltrain.runs import ENDED, observed_status

WAIT_POLL_S = 2.0  # --wait: how often status.json is read


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add `runs stop`."""
    command = add_run_command(subcommands, "stop", "ask a run to stop at its next epoch end", __doc__, run)
    command.add_argument("--wait", action="store_true", help="return once the run has ended")


def run(args: argparse.Namespace) -> None:
    """Write the stop request of a PENDING or RUNNING run (not a sweep's own folder)."""
    selected = run_named(run_store(args), args.run_id)
    status = observed_status(selected.status())
    if status not in ("PENDING", "RUNNING"):
        raise DltrainError(f"run {selected.id} is {status}: only a PENDING or RUNNING run can be stopped")
    if saved_overview(selected.config()).sweep:
        raise DltrainError(f"{selected.id} is a sweep: stop its trials (dltrain runs list --sweep {selected.id})")
    selected.request_stop(f"{getpass.getuser()}@{socket.gethostname()}")
    print(f"dltrain: asked run {selected.id} to stop; it stops at the end of its current epoch", flush=True)
    while args.wait and (status := observed_status(selected.status())) not in (*ENDED, "LOST"):
        time.sleep(WAIT_POLL_S)
    if args.wait:
        print(f"dltrain: run {selected.id} is {status}", flush=True)
