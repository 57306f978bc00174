"""`dltrain predict RUN_ID|NAME@alias|NAME:N IMAGE...`: the top-k classes of image files, without a server.

The images get the same preprocessing as on `dltrain serve`: grayscale (or RGB), resized to the model's input,
inverted when the background is light, pixels scaled to [0, 1].
"""

import argparse
from pathlib import Path

from dltrain.api.models import load_model
from dltrain.cli.options import add_storage_options, storage_options
from dltrain.errors import DltrainError


def register(commands: argparse._SubParsersAction) -> None:
    """Add `predict`."""
    command = commands.add_parser("predict", help="classify image files with a model", description=__doc__)
    command.add_argument("reference", metavar="MODEL", help="a run id, NAME:N or NAME@alias")
    command.add_argument("images", metavar="IMAGE", nargs="+", type=Path, help="image files (PNG, JPEG, BMP or GIF)")
    command.add_argument("--top-k", type=int, default=3, help="classes per image (default: 3)")
    add_storage_options(command)
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Load the model (dltrain.load_model), read every image, and print one row per image."""
    if args.top_k < 1:
        raise DltrainError(f"--top-k {args.top_k}: expected at least 1")
    top = load_model(args.reference, **storage_options(args)).top(args.images, args.top_k)
    width = max(len(str(path)) for path in args.images)
    print(f"{'image':<{width}}  " + "  ".join(f"{'#' + str(rank + 1):<22}" for rank in range(args.top_k)).rstrip())
    for path, classes in zip(args.images, top, strict=True):
        cells = "  ".join(f"{c['label'] + ' ' + format(c['probability'], '.3f'):<22}" for c in classes)
        print(f"{path!s:<{width}}  {cells.rstrip()}")
