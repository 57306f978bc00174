"""Where run folders live: a pyarrow filesystem and a root path on it (a local folder now; S3 plugs in here).

Ray Train persists checkpoints through the same (filesystem, path) pair, so dltrain's files and Ray's share
one folder per run.
"""

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs


def default_local_root() -> Path:
    """$DLTRAIN_STORAGE, else ~/dltrain_results."""
    return Path(os.environ.get("DLTRAIN_STORAGE") or Path.home() / "dltrain_results")


@dataclass(frozen=True)
class Storage:
    """A folder on a filesystem: `root` is the path the filesystem understands, `uri` the one users see."""

    filesystem: pafs.FileSystem
    root: str
    uri: str

    def join(self, *parts: str) -> str:
        """Path of `parts` below the root."""
        return "/".join([self.root.rstrip("/"), *parts])

    def uri_of(self, *parts: str) -> str:
        """User-facing location of `parts` below the root."""
        return "/".join([self.uri.rstrip("/"), *parts])

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a whole file atomically: readers see the old content or the new, never a part."""
        parent = path.rsplit("/", 1)[0]
        self.filesystem.create_dir(parent, recursive=True)
        partial = f"{parent}/.{uuid.uuid4().hex}.partial"
        with self.filesystem.open_output_stream(partial) as stream:
            stream.write(data)
        self.filesystem.move(partial, path)

    def read_bytes(self, path: str) -> bytes:
        """A whole file's content."""
        with self.filesystem.open_input_stream(path) as stream:
            return stream.read()

    def exists(self, path: str) -> bool:
        """Whether a file or folder exists at `path`."""
        return self.filesystem.get_file_info(path).type != pafs.FileType.NotFound

    def upload(self, local_folder: str | Path, path: str) -> None:
        """Copy a local folder's files to `path`, replacing files of the same name."""
        self.filesystem.create_dir(path, recursive=True)
        pafs.copy_files(str(local_folder), path, destination_filesystem=self.filesystem)

    def list_folders(self, path: str) -> list[str]:
        """Names of the folders directly below `path`."""
        selector = pafs.FileSelector(path, allow_not_found=True)
        return sorted(
            info.base_name for info in self.filesystem.get_file_info(selector) if info.type == pafs.FileType.Directory
        )


def open_storage(uri: str | None) -> Storage:
    """Storage for a `storage.uri`: None means the default local folder; relative paths are made absolute."""
    if uri is not None and "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"storage.uri={uri}: only local folders are supported by storage=local")
    root = Path(uri.removeprefix("file://")).expanduser() if uri else default_local_root()
    root = root.absolute()
    root.mkdir(parents=True, exist_ok=True)
    return Storage(pafs.LocalFileSystem(), str(root), str(root))
