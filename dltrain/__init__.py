"""dltrain: Ray-based distributed training for Keras 3 on TensorFlow or JAX.

Its Python API (dltrain/api/, README.md "Python API") is imported on first use, so that `import dltrain` stays quick
and chooses no Keras backend: `dltrain.train(["model=fashion"], storage="/tmp/runs")`, `dltrain.open_run(ID)`,
`dltrain.list_runs()`, `dltrain.register_model`, `dltrain.set_alias`, `dltrain.load_model("NAME@alias")`.
"""

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {  # name -> the module that defines it
    "train": "dltrain.api.training",
    "RunHandle": "dltrain.api.runs",
    "open_run": "dltrain.api.runs",
    "list_runs": "dltrain.api.runs",
    "LoadedModel": "dltrain.api.models",
    "load_model": "dltrain.api.models",
    "register_model": "dltrain.api.models",
    "set_alias": "dltrain.api.models",
    "DltrainError": "dltrain.errors",
}
__all__ = list(_API)


def __getattr__(name: str) -> Any:
    """The API's `name`, imported from its module on first use."""
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'dltrain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
