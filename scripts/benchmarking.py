"""Shared parts of the benchmark scripts: running a command while sampling its memory, running dltrain and
plain Keras, reading a run folder, and the one-line JSON summary every script prints."""

import contextlib
import itertools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
# The shared copy of the real data next to the checkout, as the tests use it; never downloaded by a benchmark.
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fashion-mnist"
# How often the process tree's memory is sampled: often enough to catch start-up peaks, cheap on 2 cores.
MEMORY_SAMPLE_SECONDS = 0.25


def _psutil():
    """psutil, which Ray vendors (ray/thirdparty_files) and puts on sys.path when imported: imported on first use,
    so that `--help` stays fast."""
    try:
        import psutil
    except ModuleNotFoundError:
        import ray  # noqa: F401, I001 - must come first

        import psutil
    return psutil


def environment(**extra: str) -> dict[str, str]:
    """This environment with the checkout and scripts/ first on PYTHONPATH (Ray workers inherit it, so they run
    this checkout's dltrain and can import `timeline.Timeline`)."""
    paths = [str(REPO), str(SCRIPTS), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths)), **extra}


class PeakMemory:
    """Samples the summed RSS of a process and all its descendants (Ray's GCS, raylet and workers included)."""

    def __init__(self, pid: int):
        self.psutil = _psutil()
        self.root = self.psutil.Process(pid)
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _tree_rss(self) -> int:
        total = 0
        for process in [self.root, *self.root.children(recursive=True)]:
            with contextlib.suppress(self.psutil.Error):  # ended between listing and reading
                total += process.memory_info().rss
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_bytes = max(self.peak_bytes, self._tree_rss())
            except self.psutil.Error:
                return
            self._stop.wait(MEMORY_SAMPLE_SECONDS)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Completed:
    """One finished command: when it started (epoch seconds), how long it ran, its peak memory and output."""

    command: list[str]
    started: float
    wall_seconds: float
    peak_rss_mib: float
    output: str
    extra: dict = field(default_factory=dict)


def run_command(command: list[str], env: dict[str, str] | None = None) -> Completed:
    """Run `command` from the repository root, sampling its process tree's memory; raise if it fails."""
    started = time.time()
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(command, cwd=REPO, env=env or environment(), stdout=output, stderr=subprocess.STDOUT)
        with PeakMemory(process.pid) as memory:
            process.wait()
        wall = time.time() - started
        output.seek(0)
        text = output.read()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}:\n{text[-3000:]}")
    return Completed(command, started, wall, memory.peak_bytes / 2**20, text)


def dltrain_command(*overrides: str) -> list[str]:
    """`python -m dltrain` with `overrides`, on this Python."""
    return [sys.executable, "-m", "dltrain", *overrides]


def timeline_override(path: Path) -> str:
    """The override that gives every dltrain worker the Timeline callback writing to `path`."""
    return f"+trainer.callbacks.timeline={{_target_: timeline.Timeline, path: '{path}'}}"


def plain_keras_command(*arguments: str) -> list[str]:
    """scripts/plain_keras.py with `arguments`, on this Python."""
    return [sys.executable, str(SCRIPTS / "plain_keras.py"), *arguments]


def last_json_line(output: str) -> dict:
    """The last line of `output` that is a JSON object (the summary a script prints)."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line in the output")


def run_folder(output: str, storage_uri: str) -> str:
    """The run folder `python -m dltrain` printed it was writing to."""
    match = re.search(r"dltrain: run (\S+) -> ", output)
    if match is None:
        raise ValueError(f"no run id in dltrain's output:\n{output[-2000:]}")
    return f"{storage_uri.rstrip('/')}/{match[1]}"


def read_run(folder: str, filesystem=None) -> dict:
    """A run folder's metrics history (list of rows) and summary, local or through a pyarrow filesystem."""
    import pyarrow.fs
    import pyarrow.parquet

    if filesystem is None:
        filesystem = pyarrow.fs.LocalFileSystem()
    rows = pyarrow.parquet.read_table(f"{folder}/metrics.parquet", filesystem=filesystem).to_pylist()
    with filesystem.open_input_stream(f"{folder}/summary.json") as stream:
        summary = json.loads(stream.read())
    return {"metrics": sorted(rows, key=lambda row: row["epoch"]), "summary": summary}


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def steady(values: list[float]) -> list[float]:
    """Per-epoch values without epoch 1 (tracing, warm-up); all of them if there is only one."""
    return values[1:] or values


def steady_epoch_seconds(times: dict) -> list[float]:
    """Seconds from each epoch's start to the next one's (the last: to the end of training), epoch 1 excluded.

    These intervals include everything a user waits for per epoch: training, validation and the epoch-end
    callbacks (dltrain's checkpoint, TensorBoard and log uploads).
    """
    starts = times["epoch_begin"] + [times["train_end"]]
    return [later - earlier for earlier, later in itertools.pairwise(starts[1:])]


def machine() -> dict:
    """Where and under what load the figures were taken."""
    import keras
    import ray
    import tensorflow as tf

    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(_psutil().virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "ray": ray.__version__,
    }


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages: other jobs sharing the cores show here."""
    return [round(value, 2) for value in os.getloadavg()]


def emit(summary: dict, output: Path | None = None) -> None:
    """Print the summary as the script's one JSON line (and save it to `output` if given)."""
    line = json.dumps(summary)
    if output is not None:
        output.write_text(line + "\n")
    print(line, flush=True)
