"""Which model to serve: a run's final model, or a registered model version (NAME:N, NAME@alias), read from any
storage into memory, with its class names and where it came from."""

import dataclasses

from dltrain.references import model_folder
from dltrain.runs import CONFUSION_MATRIX_FILE, MODEL_FILE
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
    folder = model_folder(storage, reference)
    model_bytes = storage.read_bytes(f"{folder.path}/{MODEL_FILE}")
    confusion = f"{folder.path}/{CONFUSION_MATRIX_FILE}"
    if storage.exists(confusion):
        class_names = storage.read_json(confusion)["class_names"]
    else:  # a Fashion-MNIST run from before class names were stored beside its model
        from dltrain.data import fashion_mnist  # imports Keras: only here, so that `dltrain --help` stays quick

        class_names = list(fashion_mnist.CLASS_NAMES)
    return ModelSource(model_bytes, class_names, reference, folder.run_id, folder.name, folder.version)
