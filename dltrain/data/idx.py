"""Reading IDX files (the MNIST family's format), plain or gzip-compressed, and checking their md5s."""

import gzip
import hashlib
from pathlib import Path

import numpy as np

# IDX type codes -> big-endian NumPy dtypes (https://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IdxError(ValueError):
    """A file that is not a well-formed IDX file, or whose checksum is wrong."""


def md5sum(path: Path) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str) -> None:
    """Raise IdxError naming the file and both checksums if `path` does not have md5 `expected`."""
    actual = md5sum(path)
    if actual != expected:
        raise IdxError(f"{path} is corrupted: md5 {actual}, expected {expected}; delete it or fetch it again")


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (`.gz` is decompressed) into an array of its declared shape and type."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as error:
        raise IdxError(f"{path} cannot be read as an IDX file: {error}") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise IdxError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    dtype, ndim = np.dtype(_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected_bytes = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected_bytes:
        raise IdxError(f"{path} holds {len(data)} bytes, but its header {shape} promises {expected_bytes}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
