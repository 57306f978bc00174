"""Where a model's initial weights come from: `model.weights` references resolved to a local file for the builder.

`run:RUN_ID` is a completed run's final model and `model:NAME@alias` (or NAME:N) a registered one, both in the
run's storage; an s3:// file is downloaded. Local paths, `none` and `imagenet` are left to the builder.
"""

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dltrain.job import StorageConfig
from dltrain.references import model_folder
from dltrain.runs import MODEL_FILE
from dltrain.storage import open_storage, resolver


@contextlib.contextmanager
def local_weights(reference: object, storage_config: StorageConfig | None) -> Iterator[object]:
    """`reference` as a builder takes it: a run:/model: reference or an s3:// file as a local copy, kept for the
    block; anything else unchanged. ValueError in one line where the reference names nothing."""
    if not isinstance(reference, str) or not reference.startswith(("run:", "model:", "s3://")):
        yield reference
        return
    if storage_config is None:
        raise ValueError(f"model.weights={reference}: no storage to read it from")
    try:
        if reference.startswith("s3://"):
            filesystem, path = resolver(storage_config)(reference)
            with filesystem.open_input_stream(path) as stream:
                data, name = stream.read(), reference.rsplit("/", 1)[-1]
        else:
            storage = open_storage(storage_config)
            folder = model_folder(storage, reference.partition(":")[2])
            data, name = storage.read_bytes(f"{folder.path}/{MODEL_FILE}"), MODEL_FILE
    except (OSError, ValueError) as error:
        raise ValueError(f"model.weights={reference}: {error}") from error
    with tempfile.TemporaryDirectory(prefix="dltrain-weights-") as folder:
        local = Path(folder) / name
        local.write_bytes(data)
        yield str(local)
