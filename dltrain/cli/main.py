"""`dltrain COMMAND ...`: the console script. Each command's module registers its parser and handler."""

import argparse
import os
import sys

from dltrain.cli import data, models, predict, rerun, runs, serve, train
from dltrain.errors import DltrainError
from dltrain.redaction import scrub_urls

COMMANDS = (train, rerun, runs, models, data, serve, predict)


class _OneLineErrors(argparse.ArgumentParser):
    """Bad arguments end in one line and exit 2 (argparse's own error prints the whole usage first)."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    """The whole command line: `dltrain COMMAND ...`."""
    top = _OneLineErrors(prog="dltrain", description="Distributed training for TensorFlow/Keras on Ray.")
    top.set_defaults(passes_on=False)  # train passes its arguments on to Hydra, unparsed
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(commands)
    return top


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the command; a DltrainError ends in one line and exit status 2."""
    top = parser()
    args, passed_on = top.parse_known_args(argv)
    if passed_on and not args.passes_on:
        top.error(f"unrecognized arguments: {' '.join(passed_on)}")
    args.passed_on = passed_on
    try:
        args.handler(args)
    except DltrainError as error:
        print(f"dltrain: error: {scrub_urls(str(error))}", file=sys.stderr)  # s3://KEY:SECRET@... never printed
        sys.exit(2)
    except BrokenPipeError:  # `dltrain runs list | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        sys.exit(1)
