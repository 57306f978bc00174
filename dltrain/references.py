"""What a reference names, wherever one is accepted: a run id, or the NAME:N or NAME@alias of a registered model
version; the run it names (the one a version came from), or the model folder it names (a version's own copy)."""

from dataclasses import dataclass

from dltrain.registry import Registry
from dltrain.runs import Run, RunStore
from dltrain.storage import Storage


def is_registered(reference: str) -> bool:
    """Whether `reference` names a registered model version (NAME:N, NAME@alias): a run id has no : nor @."""
    return ":" in reference or "@" in reference


def named_run(storage: Storage, reference: str) -> Run:
    """The run `reference` names in `storage`; ValueError in one line where it names none."""
    run_id = Registry(storage).get(reference)["run_id"] if is_registered(reference) else reference
    return RunStore(storage).get(run_id)


@dataclass(frozen=True)
class ModelFolder:
    """A final model's folder in the storage (model.keras and its metrics), and whose it is."""

    path: str
    run_id: str
    name: str  # the registered name, else the run id
    version: int | None  # the registered version, if any


def model_folder(storage: Storage, reference: str) -> ModelFolder:
    """The final model `reference` names in `storage`: a version's copy in the registry, or a run's own; ValueError
    in one line where there is none (an unknown run or name, a run that has not completed)."""
    if is_registered(reference):
        registry = Registry(storage)
        record = registry.get(reference)
        return ModelFolder(registry.model_path(record), record["run_id"], record["name"], record["version"])
    run = RunStore(storage).get(reference)
    if not run.has_final_model():
        raise ValueError(f"run {reference} has no final model ({run.status()['status']}): serve a COMPLETED run")
    return ModelFolder(f"{run.path}/model", run.id, run.id, None)
