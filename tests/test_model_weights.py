"""model.weights references (run:ID, model:NAME@alias, s3:// files) resolved to local copies for a builder."""

import os
import shutil

import keras
import pytest

from dltrain.job import StorageConfig
from dltrain.model_weights import local_weights
from dltrain.registry import Registry
from dltrain.runs import RunStore
from dltrain.storage import open_storage


def test_runs_and_registered_models_become_local_model_files(completed_run, tmp_path):
    shutil.copytree(completed_run, tmp_path / "runs" / completed_run.name)
    storage_config = StorageConfig(uri=str(tmp_path / "runs"))
    storage = open_storage(storage_config)
    Registry(storage).register(RunStore(storage).get(completed_run.name), "garments", {}, alias="production")
    original = keras.saving.load_model(completed_run / "model" / "model.keras", compile=False)
    for reference in (f"run:{completed_run.name}", "model:garments@production", "model:garments:1"):
        with local_weights(reference, storage_config) as path:
            copy = keras.saving.load_model(path, compile=False)
            assert [w.tolist() for w in copy.get_weights()] == [w.tolist() for w in original.get_weights()]
        assert not os.path.exists(path)  # a copy for the block only
    with local_weights("/some/model.keras", storage_config) as path:
        assert path == "/some/model.keras"  # local paths, none and imagenet are the builder's
    for reference, message in (("run:20990101-000000-abcdef", "no run '20990101-000000-abcdef'"),
                               ("model:garments@staging", "staging")):  # fmt: skip
        with (
            pytest.raises(ValueError, match=f"model.weights={reference}: .*{message}") as error,
            local_weights(reference, storage_config),
        ):
            pass
        assert "\n" not in str(error.value)
