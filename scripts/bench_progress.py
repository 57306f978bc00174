"""What the console's progress costs, and whether its lines come on time: `python -m dltrain` (one worker, the
reference recipe) with its output piped, `trainer.progress=lines` and `=epochs` alternately (ABBA order).

For each run: the steady epoch's wall seconds (scripts/timeline.py), the progress lines printed inside each
epoch, how long after each epoch's end (the Timeline's epoch_end, before the checkpoint) its epoch line reached
the pipe, and what the run left in the temporary folder. Targets: steady epoch within 1% of `epochs`, >= 2
progress lines inside every epoch, every epoch line within 1 s, nothing left behind. Also what one progress
message costs rank 0 in CPU, and so its share of an epoch by count.

    python scripts/bench_progress.py                        # full data (54,000 images), 3 epochs, 2 pairs
    python scripts/bench_progress.py --epochs 5 --repetitions 3

Prints one JSON line at the end.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import benchmarking as bench

from dltrain.progress import QUARTERS, SEND_EVERY_S

TARGET_RATIO = 1.01
TARGET_LINES = 2
TARGET_LAG_S = 1.0
_EPOCH_LINE = re.compile(r"^epoch (\d+)/\d+  loss ")
_PROGRESS_LINE = re.compile(r"^epoch (\d+)/\d+  step ")


def _temporary_files() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith(("dltrain", "__autograph", "ray"))}


def _run(args: argparse.Namespace, mode: str, folder: Path) -> dict:
    """One run: stdout read line by line as it comes, each line with its arrival time."""
    timeline = folder / f"timeline-{mode}.json"
    command = bench.dltrain_command(
        f"dataset.path={args.data}", f"trainer.epochs={args.epochs}", f"dataset.limit={args.limit or 'null'}",
        f"storage.uri={folder / 'runs'}", f"trainer.progress={mode}", bench.timeline_override(timeline),
    )  # fmt: skip
    before = _temporary_files()
    process = subprocess.Popen(
        command, cwd=bench.REPO, env=bench.environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.time(), line.rstrip()) for line in process.stdout))
    reader.start()
    stderr = process.stderr.read()
    process.wait()
    reader.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}:\n{stderr[-3000:]}")
    times = json.loads(timeline.read_text())
    printed = {int(match[1]): at for at, line in lines if (match := _EPOCH_LINE.match(line))}
    lags = [printed[epoch + 1] - end for epoch, end in enumerate(times["epoch_end"])]
    inside = [
        sum(1 for at, line in lines if (match := _PROGRESS_LINE.match(line)) and int(match[1]) == epoch + 1)
        for epoch in range(len(times["epoch_end"]))
    ]
    return {
        "steady_epoch_seconds": bench.mean(bench.steady_epoch_seconds(times)),
        "progress_lines_per_epoch": inside,
        "epoch_line_lag_seconds": [round(lag, 3) for lag in lags],
        "left_behind": sorted(_temporary_files() - before),
        "output": [line for _, line in lines],
    }


def _send_cpu_seconds(sends: int = 2000) -> float:
    """CPU seconds one progress message costs its sender: a Ray task sends `sends` of them to a queue actor, as
    rank 0 does."""
    import ray
    from ray.util.queue import Queue

    from dltrain.cluster import ray_connection

    @ray.remote(num_cpus=1)
    def send(actor, count: int) -> float:
        message = {"kind": "progress", "run_id": "r", "epoch": 1, "epochs": 3, "step": 1, "steps": 421,
                   "loss": 0.5, "accuracy": 0.8, "samples_per_second": 3000.0, "eta_seconds": 5.0}  # fmt: skip
        started = time.process_time()
        for _ in range(count):
            actor.put_nowait.remote(message)
        return (time.process_time() - started) / count

    with ray_connection(None):
        return ray.get(send.remote(Queue(actor_options={"num_cpus": 0}).actor, sends))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=bench.DEFAULT_DATA, help="the Fashion-MNIST folder")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=0, help="training images (0: all 60,000)")
    parser.add_argument("--repetitions", type=int, default=2, help="pairs of runs, in alternating order")
    parser.add_argument("--output", type=Path, help="also write the JSON line here")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"lines": [], "epochs": []}
    with tempfile.TemporaryDirectory(prefix="bench-progress-") as scratch:
        for repetition in range(args.repetitions):
            for mode in list(runs)[:: 1 if repetition % 2 == 0 else -1]:  # lines, epochs, epochs, lines, ...
                run = _run(args, mode, Path(scratch) / f"{mode}-{repetition}")
                runs[mode].append(run)
                print(f"{mode}: steady epoch {run['steady_epoch_seconds']:.2f}s, progress lines "
                      f"{run['progress_lines_per_epoch']}, epoch line lags {run['epoch_line_lag_seconds']}",
                      flush=True)  # fmt: skip
    steady = {mode: statistics.median(run["steady_epoch_seconds"] for run in done) for mode, done in runs.items()}
    ratio = steady["lines"] / steady["epochs"]
    lags = [lag for mode_runs in runs.values() for run in mode_runs for lag in run["epoch_line_lag_seconds"]]
    fewest = min(count for run in runs["lines"] for count in run["progress_lines_per_epoch"])
    left = sorted({name for mode_runs in runs.values() for run in mode_runs for name in run["left_behind"]})
    send_cpu = _send_cpu_seconds()
    sends = steady["lines"] / SEND_EVERY_S + QUARTERS - 1  # rank 0's messages in an epoch: one a second, 3 quarters
    bench.emit(
        {
            "benchmark": "progress",
            "steady_epoch_seconds": {mode: round(value, 3) for mode, value in steady.items()},
            "ratio_lines_to_epochs": round(ratio, 4),
            "fewest_progress_lines_in_an_epoch": fewest,
            "epoch_line_lag_seconds": {"median": round(statistics.median(lags), 3), "max": round(max(lags), 3)},
            "left_behind": left,
            "send_cpu_ms": round(send_cpu * 1000, 3),
            # What rank 0's sends cost, by count: messages an epoch x CPU per send, over the steady epoch.
            "send_share_of_epoch": round(sends * send_cpu / steady["lines"], 6),
            "met": ratio <= TARGET_RATIO and fewest >= TARGET_LINES and max(lags) <= TARGET_LAG_S and not left,
            "sample_output": runs["lines"][-1]["output"],
            "runs": {mode: [{k: v for k, v in run.items() if k != "output"} for run in r] for mode, r in runs.items()},
        },
        args.output,
    )


if __name__ == "__main__":
    main()
