"""Image data sets as Parquet shards: made from a folder of CLASS/image files or a CSV/Parquet manifest, on a
local disk or S3 (any pyarrow filesystem), and read back a column or a stream of rows at a time.

A shard folder holds `part-NNNNN.parquet` files, one row per image: `image` (the file's encoded bytes, as they
were), `path` (where it came from) and every metadata column (as strings; a folder gives `class`, its
subfolder's name). `shards.json`, written last, lists the shards with their row counts and md5s: a folder
without it is not a complete data set.
"""

import concurrent.futures
import csv
import hashlib
import io
import json
import os
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

INDEX_FILE = "shards.json"
FORMAT = "dltrain-image-shards/1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")  # the formats training decodes
FORMATS = ("PNG", "JPEG", "BMP", "GIF")  # the same, as Pillow names them
RESERVED = ("image",)  # columns dltrain writes itself; `path` must be in a manifest
READ_THREADS = 16  # images are read concurrently: one S3 request each, which mostly waits on the network
REPORTED_EXAMPLES = 5  # skipped images named in the report, of however many

# A location (a local path or s3://bucket/key) -> the filesystem that holds it, and its path on that filesystem.
Resolver = Callable[[str], tuple[pafs.FileSystem, str]]


@dataclass(frozen=True)
class Prepared:
    """What `prepare` wrote: its images, and those it skipped as unreadable (the first few by path)."""

    images: int
    shards: int
    skipped: int
    skipped_examples: tuple[str, ...]


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}"


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def list_tree(filesystem: pafs.FileSystem, root: str) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of every file below the folder `root`, sorted. A local folder's symbolic links are
    taken only to files inside it: never out of it, and never to a folder (a loop, or the same images twice)."""
    if not isinstance(filesystem, pafs.LocalFileSystem):
        selector = pafs.FileSelector(root, recursive=True)
        entries = filesystem.get_file_info(selector)
        return sorted((e.path, e.size, e.mtime_ns) for e in entries if e.type == pafs.FileType.File)
    inside, files = os.path.realpath(root), []
    for folder, _, names in os.walk(root):  # never into a linked folder
        for name in names:
            path = os.path.join(folder, name)
            if os.path.islink(path) and not _within(os.path.realpath(path), inside):
                continue
            if os.path.isfile(path):
                status = os.stat(path)
                files.append((path, status.st_size, status.st_mtime_ns))
    return sorted(files)


def scan_folder(resolve: Resolver, folder: str) -> pa.Table:
    """`path` and `class` of every image file in the subfolders of `folder` (CLASS/NAME.png, ...), sorted; locally
    through no symbolic link out of the folder or to a folder (list_tree)."""
    filesystem, root = resolve(folder)
    if filesystem.get_file_info(root).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{folder} is not a folder")
    rows = []
    for path, _, _ in list_tree(filesystem, root):
        relative = path.removeprefix(root.rstrip("/") + "/")
        if relative.lower().endswith(IMAGE_SUFFIXES) and "/" in relative:
            rows.append((_join(folder, relative), relative.split("/", 1)[0]))
    if not rows:
        raise ValueError(f"{folder} holds no CLASS/*{'|*'.join(IMAGE_SUFFIXES)} image files")
    rows.sort()
    return pa.table({"path": [path for path, _ in rows], "class": [label for _, label in rows]})


def read_manifest(resolve: Resolver, manifest: str, allow_outside: bool = False) -> pa.Table:
    """A CSV or Parquet manifest, every column as strings, its `path` column made absolute: a path is relative to
    the manifest's folder. Paths that lead outside that folder (`../`, absolute paths, s3:// URIs, links to files
    elsewhere) are refused with ValueError, unless `allow_outside`."""
    if not manifest.lower().endswith((".csv", ".parquet")):
        raise ValueError(f"manifest {manifest}: expected a .csv or .parquet file")
    filesystem, path = resolve(manifest)
    with filesystem.open_input_file(path) as file:
        data = file.read()
    if manifest.lower().endswith(".csv"):
        # Every column as text: a label such as 1850 or 007 must stay as written.
        header = next(csv.reader(io.StringIO(data.decode("utf-8-sig").split("\n", 1)[0])), [])
        options = pyarrow.csv.ConvertOptions(column_types=dict.fromkeys(header, pa.string()), strings_can_be_null=True)
        table = pyarrow.csv.read_csv(io.BytesIO(data), convert_options=options)
    else:
        table = pq.read_table(io.BytesIO(data))
    table = table.cast(pa.schema([(name, pa.string()) for name in table.column_names]))
    if "path" not in table.column_names:
        raise ValueError(f"manifest {manifest} has no path column; its columns: {', '.join(table.column_names)}")
    if reserved := [name for name in RESERVED if name in table.column_names]:
        raise ValueError(f"manifest {manifest}: column {reserved[0]!r} is reserved for the image bytes; rename it")
    scheme, _, folder = posixpath.dirname(manifest).rpartition("://")
    prefix = f"{scheme}://" if scheme else ""
    folder = folder if scheme else os.path.abspath(folder or ".")
    given = table.column("path").to_pylist()
    paths = [
        path if path is None or path.startswith(("s3://", "/")) else prefix + posixpath.normpath(_join(folder, path))
        for path in given
    ]
    local = isinstance(filesystem, pafs.LocalFileSystem)

    def leaves(path: str) -> bool:
        """Whether `path` is outside the manifest's folder, or (locally) a link to a file outside it."""
        if not path.startswith(prefix) or not _within(posixpath.normpath(path.removeprefix(prefix)), folder):
            return True
        return local and not _within(os.path.realpath(path), os.path.realpath(folder))

    outside = [original for original, path in zip(given, paths, strict=True) if path is not None and leaves(path)]
    if outside and not allow_outside:
        raise ValueError(
            f"manifest {manifest}: {len(outside)} path(s) lead outside its folder, e.g. {outside[0]!r}: refused "
            "unless dataset.allow_outside_paths=true (dltrain data prepare --allow-outside-paths)"
        )
    return table.set_column(table.column_names.index("path"), "path", pa.array(paths, pa.string()))


def _read_image(resolve: Resolver, location: str | None) -> bytes | None:
    """The file's bytes if it is a whole image in a format training can decode, else None."""
    if location is None:
        return None
    try:
        filesystem, path = resolve(location)
        with filesystem.open_input_stream(path) as stream:
            data = stream.read()
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:  # no other reader is tried (EPS: Ghostscript)
            image.load()  # decodes every pixel: a truncated or corrupt file fails here
        return data
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None


def prepare(resolve: Resolver, table: pa.Table, destination: str, shard_bytes: int) -> Prepared:
    """Write the images `table` lists (a `path` column and metadata) into Parquet shards of about `shard_bytes`
    in the folder `destination`, then its shards.json. Unreadable images are counted and skipped."""
    output, folder = resolve(destination)
    output.create_dir(folder, recursive=True)
    paths = table.column("path").to_pylist()
    shards, pending, pending_bytes, skipped = [], [], 0, []

    def flush() -> None:
        nonlocal pending, pending_bytes
        rows = table.take(pa.array([index for index, _ in pending]))
        rows = rows.append_column("image", pa.array([data for _, data in pending], pa.binary()))
        name = f"part-{len(shards):05d}.parquet"
        buffer = io.BytesIO()
        pq.write_table(rows, buffer, compression="none")  # encoded images do not compress further
        with output.open_output_stream(_join(folder, name)) as stream:
            stream.write(buffer.getvalue())
        shards.append({"file": name, "rows": rows.num_rows, "md5": hashlib.md5(buffer.getvalue()).hexdigest()})
        pending, pending_bytes = [], 0

    with concurrent.futures.ThreadPoolExecutor(READ_THREADS) as pool:
        for index, data in enumerate(pool.map(lambda path: _read_image(resolve, path), paths)):
            if data is None:
                skipped.append(str(paths[index]))
                continue
            pending.append((index, data))
            pending_bytes += len(data)
            if pending_bytes >= shard_bytes:
                flush()
    if pending:
        flush()
    if not shards:
        raise ValueError(f"none of the {len(paths)} images could be read, e.g. {', '.join(skipped[:3])}")
    columns = [name for name in table.column_names if name != "path"]
    index = {"format": FORMAT, "images": len(paths) - len(skipped), "metadata_columns": columns,
             "skipped": len(skipped), "skipped_examples": skipped[:REPORTED_EXAMPLES], "shards": shards}  # fmt: skip
    with output.open_output_stream(_join(folder, INDEX_FILE)) as stream:
        stream.write(json.dumps(index, indent=1).encode())
    return Prepared(index["images"], len(shards), len(skipped), tuple(skipped[:REPORTED_EXAMPLES]))


def read_index(filesystem: pafs.FileSystem, folder: str) -> dict | None:
    """A shard folder's shards.json, or None where `folder` is not one (or not yet complete)."""
    try:
        with filesystem.open_input_stream(_join(folder, INDEX_FILE)) as stream:
            index = json.loads(stream.read())
    except (FileNotFoundError, NotADirectoryError):
        return None
    if index.get("format") != FORMAT:
        raise ValueError(f"{_join(folder, INDEX_FILE)} is not a {FORMAT} index")
    return index


def read_columns(filesystem: pafs.FileSystem, folder: str, index: dict, columns: list[str]) -> pa.Table:
    """The `columns` of every shard, in row order (without the image bytes: a few bytes per image)."""
    tables = []
    for shard in index["shards"]:
        with filesystem.open_input_file(_join(folder, shard["file"])) as file:
            tables.append(pq.read_table(file, columns=columns))
    return pa.concat_tables(tables)


def stream_images(
    filesystem: pafs.FileSystem, folder: str, index: dict, rows: np.ndarray, shard_order: np.ndarray | None = None
) -> Iterator[tuple[list[bytes], np.ndarray]]:
    """(image bytes, row numbers) of the sorted global row numbers `rows`, a record batch at a time, shard after
    shard (in `shard_order`, if given): only the rows asked for are kept in memory."""
    starts = np.cumsum([0] + [shard["rows"] for shard in index["shards"]])
    order = range(len(index["shards"])) if shard_order is None else shard_order
    for number in order:
        first, end = starts[number], starts[number + 1]
        wanted = rows[(rows >= first) & (rows < end)] - first
        if not len(wanted):
            continue
        with filesystem.open_input_file(_join(folder, index["shards"][number]["file"])) as file:
            offset = 0
            for batch in pq.ParquetFile(file).iter_batches(columns=["image"], batch_size=1024):
                mine = wanted[(wanted >= offset) & (wanted < offset + batch.num_rows)]
                if len(mine):
                    yield batch.column(0).take(pa.array(mine - offset)).to_pylist(), first + mine
                offset += batch.num_rows
