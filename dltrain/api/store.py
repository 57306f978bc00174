"""The run store every function of the Python API takes: `storage` (a folder or s3://bucket/prefix; None:
$DLTRAIN_STORAGE, else ~/dltrain_results, as for the `dltrain` command), with `endpoint_url` and `region` for S3."""

import os

from dltrain.job import StorageConfig
from dltrain.storage import Storage, open_checked

StorageLocation = str | os.PathLike | None


def opened(storage: StorageLocation, endpoint_url: str | None = None, region: str | None = None) -> Storage:
    """The run store `storage` names, checked (an S3 bucket's credentials, its endpoint); DltrainError in one line
    where it cannot be used."""
    uri = None if storage is None else os.fspath(storage)
    return open_checked(StorageConfig(uri=uri, endpoint_url=endpoint_url, region=region))


def storage_overrides(
    storage: StorageLocation, endpoint_url: str | None = None, region: str | None = None
) -> list[str]:
    """The key=value overrides that send a run to that store (none for None: the config's own, storage.uri)."""
    overrides = []
    if storage is not None:
        uri = os.fspath(storage)
        overrides += ["storage=s3"] if uri.startswith("s3://") else []
        overrides.append(f"storage.uri={uri}")
    overrides += [f"storage.endpoint_url={endpoint_url}"] if endpoint_url else []
    return overrides + ([f"storage.region={region}"] if region else [])
