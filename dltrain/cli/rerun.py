"""`dltrain rerun ID [storage options] [key=value ...]`: a new run with run ID's saved config.

The same as `python -m dltrain rerun=ID ...`. Only where the run goes (storage.*) and how Ray is reached (ray.*)
may be set; the model, data and training settings are the original's. With trainer.deterministic=true, a rerun on
CPU repeats the original's per-epoch losses and accuracies exactly.
"""

import argparse

from dltrain.api.store import storage_overrides
from dltrain.cli import hydra_entry
from dltrain.cli.options import add_storage_options, storage_options


def register(commands: argparse._SubParsersAction) -> None:
    """Add `rerun`; key=value arguments after the options go to Hydra."""
    command = commands.add_parser("rerun", help="a new run with a run's saved config", description=__doc__)
    command.add_argument("run_id", metavar="ID", help="the run to repeat, as `dltrain runs list` shows it")
    add_storage_options(command)
    command.set_defaults(handler=run, passes_on=True)


def run(args: argparse.Namespace) -> None:
    """Hand `rerun=ID` and the storage options, as overrides, to the Hydra entry point."""
    hydra_entry.train([f"rerun={args.run_id}", *storage_overrides(**storage_options(args)), *args.passed_on])
