"""Which run a reference names, wherever one is accepted: a run id, or the NAME:N or NAME@alias of a registered
model version, which names the run it came from."""

from dltrain.registry import Registry
from dltrain.runs import Run, RunStore
from dltrain.storage import Storage


def named_run(storage: Storage, reference: str) -> Run:
    """The run `reference` names in `storage`; ValueError in one line where it names none."""
    return RunStore(storage).get(Registry(storage).run_id_of(reference))
