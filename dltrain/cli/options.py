"""What every command that reads a run store or its model registry takes: `--storage URI` (`--endpoint-url`,
`--region` for S3)."""

import argparse
import math
import os
import sys
from collections.abc import Callable

from dltrain.api.store import opened
from dltrain.errors import DltrainError
from dltrain.registry import Registry
from dltrain.runs import RunStore


def add_storage_options(parser: argparse.ArgumentParser) -> None:
    """--storage, --endpoint-url and --region, with training's defaults."""
    group = parser.add_argument_group("storage")
    group.add_argument(
        "--storage",
        metavar="URI",
        default=os.environ.get("DLTRAIN_STORAGE"),
        help="a folder or s3://bucket/prefix (default: $DLTRAIN_STORAGE, else ~/dltrain_results, as for training)",
    )
    group.add_argument("--endpoint-url", metavar="URL", help="an S3-compatible server's http(s)://host:port")
    group.add_argument("--region", help="the S3 region (default: $AWS_REGION, else us-east-1)")


def finite_number(text: str) -> float:
    """An argparse type: a finite number (inf and nan are refused in argparse's one line)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def storage_options(args: argparse.Namespace) -> dict[str, str | None]:
    """The storage options as the Python API takes them: storage, endpoint_url, region."""
    return {"storage": args.storage, "endpoint_url": args.endpoint_url, "region": args.region}


def run_store(args: argparse.Namespace) -> RunStore:
    """The run store the storage options name; DltrainError in one line if it cannot be opened."""
    return RunStore(opened(**storage_options(args)))


def add_run_command(
    subcommands: argparse._SubParsersAction, name: str, summary: str, description: str, handler: Callable
) -> argparse.ArgumentParser:
    """A subcommand about one run: `NAME ID [its own options] [storage options]`, run by `handler(args)`."""
    command = subcommands.add_parser(name, help=summary, description=description)
    command.add_argument("run_id", metavar="ID", help="a run id, as `dltrain runs list` shows it, or NAME:N or "
                         "NAME@alias: the run a registered model came from")  # fmt: skip
    add_storage_options(command)
    command.set_defaults(handler=handler)
    return command


def confirmed(args: argparse.Namespace, question: str) -> bool:
    """Whether to go on deleting: --yes, or a yes to `question` on the terminal; DltrainError in one line where
    there is no terminal to ask. A no says that nothing was deleted."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise DltrainError("deleting needs --yes where there is no terminal to ask; nothing was deleted")
    if input(f"{question} [y/N] ").strip().lower() in ("y", "yes"):
        return True
    print("nothing was deleted")
    return False


def registry(args: argparse.Namespace) -> Registry:
    """The model registry of the storage the options name."""
    return Registry(run_store(args).storage)
