"""The driver's side of training a composed config (driver.py): which framework a resumed or repeated run takes."""

import pytest

from dltrain.config import to_mapping
from dltrain.driver import framework_of
from dltrain.job import StorageConfig
from dltrain.runs import RunStore
from dltrain.storage import open_storage

from helpers.config import compose_config, resolved


@pytest.mark.parametrize("key", ["resume", "rerun"])
def test_resume_and_rerun_take_the_saved_runs_framework_not_the_default(key, tmp_path):
    # A run saved on JAX: Keras' backend must be JAX's before anything imports Keras, though the command's config
    # (the default framework, TensorFlow) does not say so.
    storage = open_storage(StorageConfig(uri=str(tmp_path)))
    run = RunStore(storage).create(to_mapping(resolved("framework=jax")), versions={})
    assert framework_of(compose_config(f"{key}={run.id}", f"storage.uri={tmp_path}")) == "jax"
    assert framework_of(compose_config(f"storage.uri={tmp_path}")) == "tensorflow"
