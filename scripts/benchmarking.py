"""Shared parts of the benchmark scripts: running a command while sampling its memory, running dltrain and
plain Keras, reading a run folder, and the one-line JSON summary every script prints."""

import bisect
import contextlib
import importlib.metadata
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
from dataclasses import dataclass
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
# The shared copy of the real data next to the checkout, as the tests use it; never downloaded by a benchmark.
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fashion-mnist"
# How often the process tree is sampled: often enough to catch start-up memory peaks, cheap on 2 cores.
SAMPLE_SECONDS = 0.25


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


class TreeSampler:
    """Samples a process and all its descendants (Ray's GCS, raylet, actors and workers included): the peak of
    their summed RSS, and their summed CPU time over time (an ended process keeps its last reading).

    CPU seconds measure the work done whatever else shares the cores, so they compare runs taken under
    different load; wall seconds do not."""

    def __init__(self, pid: int):
        self.psutil = _psutil()
        self.root = self.psutil.Process(pid)
        self.peak_bytes = 0
        self.cpu_series: list[tuple[float, float]] = []  # (epoch seconds, CPU seconds of the tree so far)
        self._cpu_by_pid: dict[int, float] = {}
        # Per process: its latest name (Ray renames its workers, e.g. ray::TrainController) and niceness, when it
        # was first seen (epoch seconds) and its CPU-time samples.
        self.processes: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _read_tree(self) -> None:
        rss = 0
        for process in [self.root, *self.root.children(recursive=True)]:
            with contextlib.suppress(self.psutil.Error):  # ended between listing and reading
                with process.oneshot():
                    rss += process.memory_info().rss
                    times = process.cpu_times()
                    name, nice = process.name(), process.nice()
                self._cpu_by_pid[process.pid] = times.user + times.system
                record = self.processes.setdefault(process.pid, {"first_seen": time.time(), "samples": []})
                record["name"], record["nice"] = name, nice
                record["samples"].append((time.time(), times.user + times.system))
        self.peak_bytes = max(self.peak_bytes, rss)
        self.cpu_series.append((time.time(), sum(self._cpu_by_pid.values())))

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self._read_tree()
            except self.psutil.Error:
                return
            self._stop.wait(SAMPLE_SECONDS)

    def cpu_seconds_at(self, moment: float, samples: list[tuple[float, float]] | None = None) -> float:
        """CPU seconds up to `moment` of the tree (or of one process's `samples`), interpolated."""
        samples = self.cpu_series if samples is None else samples
        if moment <= samples[0][0]:
            return 0.0 if samples is not self.cpu_series else samples[0][1]
        times = [sample[0] for sample in samples]
        index = min(bisect.bisect_left(times, moment), len(times) - 1)
        (t0, c0), (t1, c1) = samples[max(index - 1, 0)], samples[index]
        return c0 + (c1 - c0) * min(max(moment - t0, 0), t1 - t0) / (t1 - t0) if t1 > t0 else c1

    def __enter__(self) -> "TreeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Completed:
    """One finished command: when it started (epoch seconds), how long it ran, its peak memory and output, and
    its tree's CPU-time samples."""

    command: list[str]
    started: float
    wall_seconds: float
    peak_rss_mib: float
    output: str
    tree: TreeSampler

    def cpu_seconds_between(self, start: float, end: float) -> float:
        """CPU seconds the whole process tree used between two wall-clock moments (epoch seconds)."""
        return self.tree.cpu_seconds_at(end) - self.tree.cpu_seconds_at(start)


def run_command(command: list[str], env: dict[str, str] | None = None) -> Completed:
    """Run `command` from the repository root, sampling its process tree; raise if it fails."""
    started = time.time()
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(command, cwd=REPO, env=env or environment(), stdout=output, stderr=subprocess.STDOUT)
        with TreeSampler(process.pid) as tree:
            process.wait()
        wall = time.time() - started
        output.seek(0)
        text = output.read()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}:\n{text[-3000:]}")
    return Completed(command, started, wall, tree.peak_bytes / 2**20, text, tree)


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


def steady_epochs(times: dict) -> list[tuple[float, float]]:
    """(start, end) wall-clock moments of every epoch but the first, from a Timeline file's `times`: each epoch
    runs from its start to the next one's (the last: to the end of training).

    These spans hold everything a user waits for per epoch: training, validation and the epoch-end callbacks
    (dltrain's checkpoint, TensorBoard and log uploads).
    """
    starts = times["epoch_begin"] + [times["train_end"]]
    return list(itertools.pairwise(starts[1:]))


def steady_epoch_seconds(times: dict) -> list[float]:
    """Wall seconds of every epoch but the first (see `steady_epochs`)."""
    return [end - start for start, end in steady_epochs(times)]


def machine() -> dict:
    """Where and under what load the figures were taken: the machine and the versions installed (read from their
    packages' metadata: nothing is imported)."""
    versions = {}
    for package in ("tensorflow", "jax", "jaxlib", "keras", "ray"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(_psutil().virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        **versions,
    }


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages: other jobs sharing the cores show here."""
    return [round(value, 2) for value in os.getloadavg()]


def emit(summary: dict, output: Path | None = None) -> None:
    """Print the summary, with the load average after the runs and the machine, as the script's one JSON line
    (and save it to `output` if given)."""
    line = json.dumps(summary | {"load_average_after": load_average(), "machine": machine()})
    if output is not None:
        output.write_text(line + "\n")
    print(line, flush=True)
