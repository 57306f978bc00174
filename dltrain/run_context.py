"""What a run's training needs beside its Job: objects found or made at run time, never saved with the config.

Ray hands a RunContext to every worker with the Job (`train_loop_config={"job": ..., "context": ...}`).
"""

import dataclasses
import queue
import threading
from typing import TYPE_CHECKING

from dltrain.data.dataset import DataSet

if TYPE_CHECKING:
    from ray.actor import ActorHandle


@dataclasses.dataclass
class InDriver:
    """What a run in the driver's process shares with its training: the console's queue, for the epoch lines
    (there is no Ray Train controller to relay them), and the event that interrupts it."""

    console: queue.Queue
    interrupted: threading.Event = dataclasses.field(default_factory=threading.Event)
    restarts: int = 0  # after failures, so far


@dataclasses.dataclass(frozen=True)
class RunContext:
    """The run a job trains into, the data set the driver found for it, where rank 0 sends its progress, and,
    for a run in the driver's process, what it shares with the driver."""

    run_id: str
    data: DataSet
    console: "ActorHandle | queue.Queue | None" = None  # the console's queue actor or queue; None: no progress
    in_driver: InDriver | None = None  # None: a Ray Train worker
