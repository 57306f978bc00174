"""`dltrain train key=value ...`: the same as `python -m dltrain key=value ...` (Hydra composes the config)."""

import argparse

from dltrain.cli import hydra_entry


def register(commands: argparse._SubParsersAction) -> None:
    """Add `train`; its arguments, `--help` included, go to Hydra as they are."""
    command = commands.add_parser(
        "train", help="train a model (or run a sweep): dltrain train model=fashion resources=large", add_help=False
    )
    command.set_defaults(handler=run, passes_on=True)


def run(args: argparse.Namespace) -> None:
    """Hand the arguments (key=value overrides, Hydra's flags) to the Hydra entry point, as `python -m dltrain`."""
    hydra_entry.train(args.passed_on)
