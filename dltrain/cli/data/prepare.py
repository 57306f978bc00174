"""`dltrain data prepare SOURCE DEST`: convert a folder of CLASS/*.png|jpg|... or a CSV/Parquet manifest into
Parquet shards (encoded images, their paths and metadata) with a shards.json of their md5s, locally or on S3.

Training reads the shards with `dataset=image_folder dataset.path=DEST`; any metadata column can be its label.
"""

import argparse

from dltrain.cli.options import add_storage_options, finite_number
from dltrain.errors import DltrainError
from dltrain.job import StorageConfig

DEFAULT_SHARD_MB = 64  # a few seconds' reading per shard; many shards let workers read in a new order each epoch


def register(subcommands: argparse._SubParsersAction) -> None:
    """Add `data prepare`."""
    command = subcommands.add_parser("prepare", help="convert images into Parquet shards", description=__doc__)
    command.add_argument("source", metavar="SOURCE", help="a folder of CLASS/ subfolders, or a .csv / .parquet "
                         "manifest with a path column (relative to it); local or s3://")  # fmt: skip
    command.add_argument("destination", metavar="DEST", help="a new folder, local or s3://bucket/prefix")
    command.add_argument("--shard-mb", type=finite_number, default=DEFAULT_SHARD_MB, metavar="MB",
                         help=f"images per shard, in MB (default {DEFAULT_SHARD_MB})")  # fmt: skip
    command.add_argument("--allow-outside-paths", action="store_true", help="a manifest may name files outside its "
                         "folder (../, absolute paths, s3:// URIs, links to files elsewhere)")  # fmt: skip
    add_storage_options(command)  # only --endpoint-url and --region are read, for s3:// locations
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Write the shards, then say how many images went in and which could not be read."""
    from dltrain.data import shards  # imports pyarrow and Pillow: not for `dltrain --help`
    from dltrain.storage import resolver

    if args.shard_mb <= 0:
        raise DltrainError(f"--shard-mb {args.shard_mb}: expected a number of MB > 0")
    resolve = resolver(StorageConfig(uri=None, endpoint_url=args.endpoint_url, region=args.region))
    try:
        done = shards.read_index(*resolve(args.destination)) is not None
    except (OSError, ValueError) as error:
        raise DltrainError(f"{args.destination}: {error}") from error
    if done:
        raise DltrainError(f"{args.destination} already holds a prepared data set: give a new folder")
    try:
        manifest = args.source.lower().endswith((".csv", ".parquet"))
        if manifest:
            table = shards.read_manifest(resolve, args.source, args.allow_outside_paths)
        else:
            table = shards.scan_folder(resolve, args.source)
        prepared = shards.prepare(resolve, table, args.destination, int(args.shard_mb * 2**20))
    except (OSError, ValueError) as error:
        raise DltrainError(str(error) if args.source in str(error) else f"{args.source}: {error}") from error
    columns = ", ".join(name for name in table.column_names if name != "path")
    print(f"prepared {prepared.images:,} images of {args.source} into {prepared.shards} shard(s) in "
          f"{args.destination}; label columns: {columns}")  # fmt: skip
    if prepared.skipped:
        print(f"skipped {prepared.skipped} unreadable image(s), e.g. {', '.join(prepared.skipped_examples)}")
