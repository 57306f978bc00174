"""Which model to serve: a run's final model, or a registered model version (NAME:N, NAME@alias), read from any
storage into memory, with its class names and where it came from."""

import dataclasses
import json

from dltrain.registry import Registry
from dltrain.runs import CONFUSION_MATRIX_FILE, MODEL_FILE, RunStore
from dltrain.storage import Storage


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """A model file's bytes, its classes, and its identity: the run it came from and its registered version."""

    model_bytes: bytes
    class_names: list[str]
    reference: str  # as given: a run id, NAME:N or NAME@alias
    run_id: str
    name: str  # the registered name, else the run id
    version: int | None  # the registered version, if any

    def metadata(self) -> dict:
        """What `GET /metadata` and the prediction responses say of the model."""
        return {"model": self.name, "version": self.version, "run_id": self.run_id, "reference": self.reference}


def locate(storage: Storage, reference: str) -> ModelSource:
    """The model `reference` names in `storage`; ValueError in one line if there is none (an unknown run or name,
    a run that has not completed)."""
    runs = RunStore(storage)
    if ":" in reference or "@" in reference:
        registry = Registry(storage)
        record = registry.get(reference)
        folder, run_id, name, version = registry.model_path(record), record["run_id"], record["name"], record["version"]
    else:
        run = runs.get(reference)
        if not run.has_final_model():
            raise ValueError(f"run {reference} has no final model ({run.status()['status']}): serve a COMPLETED run")
        folder, run_id, name, version = f"{run.path}/model", run.id, run.id, None
    model_bytes = storage.read_bytes(f"{folder}/{MODEL_FILE}")
    confusion = f"{folder}/{CONFUSION_MATRIX_FILE}"
    if storage.exists(confusion):
        class_names = json.loads(storage.read_bytes(confusion))["class_names"]
    else:  # a Fashion-MNIST run from before class names were stored beside its model
        from dltrain.data import fashion_mnist  # imports Keras: only here, so that `dltrain --help` stays quick

        class_names = list(fashion_mnist.CLASS_NAMES)
    return ModelSource(model_bytes, class_names, reference, run_id, name, version)
