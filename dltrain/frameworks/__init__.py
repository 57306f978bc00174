"""The frameworks Keras 3 trains on, chosen in one place, as Keras itself chooses its backend: `backend(name)` is
the module of framework `name`, and every such module offers the same names:

- `NAME`, and `versions()`: what a run records;
- `ray_trainer(train_loop_per_worker, train_loop_config, **settings)`: Ray Train's trainer, which forms the
  workers' group (TensorFlow: TF_CONFIG for MultiWorkerMirroredStrategy; JAX: a JAX process group);
- `worker_environment(use_gpu, deterministic)`: variables a worker needs before the framework starts;
- `use_cpu_only()`: keep this process (a driver checking a model) off the GPUs, for its workers;
- `Training(workers, deterministic, use_gpu)`: one worker's side, with `scope()` (where the model is built) and
  `steps(model, global_batch_size, jit_compile)`: the train/eval steps with their all-reduce and loss scaling,
  fed NumPy batches (the `Steps` of engine/loop.py).

Everything else (the Ray Train worker, callbacks, checkpoints, the epoch loop, the data) is shared: worker.py.
"""

import importlib
import importlib.abc
import os
import sys
from types import ModuleType

from dltrain.errors import DltrainError

FRAMEWORKS = ("tensorflow", "jax")


class _Absent(importlib.abc.MetaPathFinder):
    """Finds no module `package` (nor its submodules) in a process on `framework`: importing it fails as if it were
    not installed."""

    def __init__(self, package: str, framework: str):
        self.package, self.framework = package, framework

    def find_spec(self, fullname: str, path: object, target: object = None) -> None:
        if fullname == self.package or fullname.startswith(f"{self.package}."):
            raise ModuleNotFoundError(f"No module named {fullname!r} on framework={self.framework}", name=fullname)
        return None


def use_keras_backend(name: str) -> None:
    """Have Keras run on framework `name` in this process: KERAS_BACKEND, set before Keras is imported.

    Keras fixes its backend when it is first imported: a process that imported it on another one (a notebook
    that trained on TensorFlow) cannot train on `name`, which fails in one line. A process on another framework
    than TensorFlow never imports TensorFlow.
    """
    if (
        name != "tensorflow"
        and "tensorflow" not in sys.modules
        and not any(isinstance(finder, _Absent) for finder in sys.meta_path)
    ):
        # Keras imports TensorFlow to serialize a model wherever it is installed, whatever Keras' backend: a process
        # on another framework never loads it (an import of it fails, which Keras takes as "not installed").
        sys.meta_path.insert(0, _Absent("tensorflow", name))
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = name
        return
    current = sys.modules["keras"].backend.backend()
    if current != name:
        raise DltrainError(
            f"framework={name}: this process imported Keras on {current} already, and Keras keeps the backend it "
            f"was first imported with; train framework={name} in a new process"
        )


def backend(name: str) -> ModuleType:
    """The backend module of framework `name`, with Keras on that backend in this process."""
    if name not in FRAMEWORKS:
        raise ValueError(f"framework {name!r} is not one of {', '.join(FRAMEWORKS)}")
    use_keras_backend(name)
    return importlib.import_module(f"dltrain.frameworks.{name}")
