"""The driver's console: a line per epoch, and progress within the epoch as a live bar or as plain lines.

Two kinds of message reach a queue actor on the driver's node:
- progress, which rank 0's ProgressSender sends straight to the queue about once a second;
- each epoch's metrics, relayed by Ray Train's controller once it has registered that epoch's checkpoint, so an
  epoch line never shows an epoch that a resume would train again. The controller polls every
  cluster.CONTROLLER_POLL_S, which puts the line on the console within a second of the epoch's end.
"""

import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

import ray
import ray.train
from ray.actor import ActorHandle
from ray.util.queue import Empty, Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from dltrain.formatting import duration
from dltrain.progress import QUARTERS

LINE_EVERY_S = 10  # lines mode: a progress line at least this often, and at each quarter of the epoch
_BAR_FORMAT = "{desc}  {bar:24}  {n_fmt}/{total_fmt}  {percentage:3.0f}%  {figures}"


def epoch_line(metrics: dict, epochs: int) -> str:
    """`epoch 3/30  loss 0.4132  accuracy 0.8520  val_loss …  val_accuracy …  9.8s  5,431 samples/s`."""
    parts = [
        f"epoch {metrics['epoch']}/{epochs}",
        f"loss {metrics['loss']:.4f}",
        f"accuracy {metrics['accuracy']:.4f}",
    ]
    if "val_loss" in metrics:
        parts += [f"val_loss {metrics['val_loss']:.4f}", f"val_accuracy {metrics['val_accuracy']:.4f}"]
    parts += [f"{metrics['seconds']:.1f}s", f"{metrics['samples_per_second']:,.0f} samples/s"]
    return "  ".join(parts)


def _figures(progress: dict) -> str:
    """`loss 0.4132  accuracy 0.8520  2,650 samples/s  ETA 8s`: the running figures of rank 0's shard."""
    return (
        f"loss {progress['loss']:.4f}  accuracy {progress['accuracy']:.4f}  "
        f"{progress['samples_per_second']:,.0f} samples/s  ETA {duration(progress['eta_seconds'])}"
    )


def progress_line(progress: dict) -> str:
    """`epoch 3/30  step 210/421  50%  loss 0.4132  accuracy 0.8520  2,650 samples/s  ETA 8s`."""
    percent = 100 * progress["step"] // progress["steps"]
    return (
        f"epoch {progress['epoch']}/{progress['epochs']}  step {progress['step']}/{progress['steps']}  "
        f"{percent}%  {_figures(progress)}"
    )


def _columns(stream: TextIO) -> int:
    """The width of the terminal `stream` writes to; 0 when it has none (a pipe, a file, a pty of size 0x0)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def resolve_mode(mode: str, stream: TextIO) -> str:
    """`trainer.progress`, with auto made a bar on a terminal and lines otherwise: a pipe, a file, a job log, or a
    terminal that gives no width (`docker run -t` before its first resize), where a bar would be empty."""
    if mode != "auto":
        return mode
    return "bar" if stream.isatty() and _columns(stream) > 0 else "lines"


class _EpochBar(tqdm):
    """tqdm with the running figures as a field of its own: its `postfix` would begin with a comma."""

    def __init__(self, *args, figures: str, **kwargs):
        self.figures = figures  # before tqdm's first display
        super().__init__(*args, **kwargs)

    @property
    def format_dict(self) -> dict:
        return super().format_dict | {"figures": self.figures}


def epoch_message(metrics: dict, run_id: str, epochs: int) -> dict:
    """The console's message for one epoch's reported metrics."""
    return metrics | {"kind": "epoch", "run_id": run_id, "epochs": epochs}


def sender(handle: "ActorHandle | queue.Queue") -> Callable[[dict], None]:
    """A function that puts a message on a console's queue, `Console.handle`, without waiting."""
    return handle.put_nowait.remote if isinstance(handle, ActorHandle) else handle.put_nowait


class EpochRelay(ray.train.UserCallback):
    """In Ray Train's controller: passes rank 0's report of each epoch to the console, after the controller has
    registered the epoch's checkpoint (reports arrive once every worker has made its own)."""

    def __init__(self, console: ActorHandle, run_id: str, epochs: int):
        self.console, self.run_id, self.epochs = console, run_id, epochs

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if metrics:
            self.console.put_nowait.remote(epoch_message(metrics[0], self.run_id, self.epochs))


class Console:
    """Shows the messages that reach its queue while the block runs, in a `trainer.progress` mode.

    `handle` is the queue: a Ray queue's actor, for the workers and the relay, or, for a run `in_process` (Ray
    Train's local mode, no Ray), a plain queue. `latest` holds each run's newest progress (a sweep's trial table
    reads it). Epochs print in order, each once: a repeated or older epoch is skipped. `on_epoch`, if given, is
    called with the run's id at each epoch it prints (or would print, by the mode), once that epoch's row is in the
    run's metrics.parquet; it must not wait (the MLflow mirror only queues its work).
    """

    def __init__(
        self,
        mode: str,
        stream: TextIO = sys.stdout,
        clock: Callable[[], float] = time.monotonic,
        in_process: bool = False,
        on_epoch: Callable[[str], None] | None = None,
    ):
        self.mode = resolve_mode(mode, stream)
        self.in_process = in_process
        self.on_epoch = on_epoch
        self.stream, self.clock = stream, clock
        self.latest: dict[str, dict] = {}
        self._printed: dict[str, int] = {}  # run id -> its last epoch line
        self._showing: dict[str, int] = {}  # run id -> the epoch whose progress is shown, before its epoch line
        self._waiting: dict[str, list[dict]] = {}  # run id -> progress of the epoch after that one, held back
        self._line_at = clock()  # lines mode: when the last line was printed
        self._line_epoch: tuple[str, int] | None = None
        self._line_quarter = 0
        self._bar: tqdm | None = None
        self._bar_epoch: tuple[str, int] | None = None
        self._queue: Queue | queue.Queue | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="dltrain-console", daemon=True)

    @property
    def shows_progress(self) -> bool:
        """Whether progress within an epoch shows (a bar or lines)."""
        return self.mode in ("bar", "lines")

    @property
    def handle(self) -> "ActorHandle | queue.Queue":
        """The queue's actor, or the in-process queue: `sender(handle)(message)` shows a message."""
        if self._queue is None:
            raise RuntimeError("the console is not open: use it in a with block")
        return self._queue if self.in_process else self._queue.actor

    def show(self, message: dict) -> None:
        """Print (or not, by the mode) one progress or epoch message."""
        run_id, epoch = message["run_id"], message["epoch"]
        if epoch <= self._printed.get(run_id, 0):
            return  # a late progress message, or an epoch trained again after a restart
        if message["kind"] == "epoch":
            self._printed[run_id] = epoch
            self._showing.pop(run_id, None)
            self.latest.pop(run_id, None)
            if self.mode in ("bar", "lines", "epochs"):
                self._close_bar()
                self._print(epoch_line(message, message["epochs"]))
            if self.on_epoch is not None:
                self.on_epoch(run_id)
            for waiting in self._waiting.pop(run_id, []):
                self.show(waiting)
            return
        if epoch > self._showing.setdefault(run_id, epoch):
            # The next epoch's progress came straight from rank 0, before the controller relayed this epoch's line.
            self._waiting.setdefault(run_id, []).append(message)
            return
        self.latest[run_id] = message
        if self.mode == "bar":
            self._show_bar(run_id, message)
        elif self.mode == "lines":
            self._show_line(run_id, message)

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)
        self._line_at = self.clock()

    def _show_line(self, run_id: str, progress: dict) -> None:
        if self._line_epoch != (run_id, progress["epoch"]):  # a new epoch: its 10 s count from its first message
            self._line_epoch, self._line_quarter, self._line_at = (run_id, progress["epoch"]), 0, self.clock()
        quarter = progress["step"] * QUARTERS // progress["steps"]
        if quarter > self._line_quarter or self.clock() - self._line_at >= LINE_EVERY_S:
            self._line_quarter = quarter
            self._print(progress_line(progress))

    def _show_bar(self, run_id: str, progress: dict) -> None:
        if self._bar_epoch != (run_id, progress["epoch"]):
            self._close_bar()
            self._bar_epoch = (run_id, progress["epoch"])
            width = _columns(self.stream)
            self._bar = _EpochBar(
                total=progress["steps"],
                initial=progress["step"],
                desc=f"epoch {progress['epoch']}/{progress['epochs']}",
                file=self.stream,
                leave=False,  # the epoch line takes its place
                bar_format=_BAR_FORMAT,
                dynamic_ncols=width > 0,  # follows the terminal's width; where it gives none, 100 columns
                ncols=None if width > 0 else 100,
                figures=_figures(progress),
            )
        self._bar.n = progress["step"]
        self._bar.figures = _figures(progress)
        self._bar.refresh()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar, self._bar_epoch = None, None

    def _drain(self) -> None:
        while not (self._done.is_set() and self._queue.empty()):
            try:
                message = self._queue.get(timeout=1)  # returns as soon as a message is there
            except (Empty, queue.Empty):
                continue
            self.show(message)

    def __enter__(self) -> "Console":
        if self.in_process:
            self._queue = queue.Queue()
            self._thread.start()
            return self
        # On the driver's node, which lives as long as the run: a lost worker node must not take the queue along.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self._queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        self._thread.join(timeout=30)
        self._close_bar()
        if not self.in_process:
            ray.kill(self._queue.actor)
