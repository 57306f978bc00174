"""What dltrain costs over plain Keras: the reference Fashion-MNIST CNN trained by plain single-process Keras 3
`model.fit` (scripts/plain_keras.py) and by `python -m dltrain` with one worker, same data, global batch and
epochs, run alternately (plain, dltrain, plain, dltrain, ...) so both see the same load from other jobs.

Per runner: steady-state seconds per epoch (epoch start to next epoch start, epoch 1 excluded, so it includes
validation and dltrain's per-epoch checkpoint and uploads), epoch 1's seconds (tracing and compilation), time
from the command's start to the first training step, whole-process wall time and peak memory (summed RSS of the
process tree, Ray's processes included). Targets: steady epoch <= 1.05x plain Keras; first step <= 8 s later.

    python scripts/bench_overhead.py                                  # 4 epochs x 2 repetitions, ~6 min on 2 cores
    python scripts/bench_overhead.py --epochs 10 --repetitions 5      # the fuller version

Prints one JSON line at the end.
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import benchmarking as bench

# The reference recipe's global batch, so the per-step work matches `python -m dltrain model=fashion`.
DEFAULT_BATCH = 128
# Epoch 1 is excluded from the steady state, so 4 epochs give 3 steady ones per run: a few minutes in all.
DEFAULT_EPOCHS = 4
# Two alternating pairs: each runner is seen twice under comparable load.
DEFAULT_REPETITIONS = 2
STEADY_TARGET = 1.05  # dltrain's steady epoch over plain Keras's
FIRST_STEP_TARGET_SECONDS = 8.0  # how much later dltrain may start its first step


def _plain(args: argparse.Namespace, folder: Path) -> dict:
    timeline = folder / "plain-timeline.json"
    command = bench.plain_keras_command(
        "--data", str(args.data), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        "--timeline", str(timeline), *(["--limit", str(args.limit)] if args.limit else []),
    )  # fmt: skip
    completed = bench.run_command(command)
    result = bench.last_json_line(completed.output)
    return _measures(completed, json.loads(timeline.read_text())) | {"test_accuracy": result["test_accuracy"]}


def _dltrain(args: argparse.Namespace, folder: Path) -> dict:
    timeline, storage = folder / "dltrain-timeline.json", str(folder / "runs")
    command = bench.dltrain_command(
        f"dataset.path={args.data}", f"storage.uri={storage}", f"trainer.epochs={args.epochs}",
        f"trainer.batch_size={args.batch_size}", f"dataset.limit={args.limit or 'null'}",
        bench.timeline_override(timeline),
    )  # fmt: skip
    completed = bench.run_command(command)
    run = bench.read_run(bench.run_folder(completed.output, storage))
    measures = _measures(completed, json.loads(timeline.read_text()))
    # dltrain's own per-epoch `seconds` (train + validation, without the epoch-end checkpoint) for reference.
    measures["metrics_steady_epoch_seconds"] = bench.mean(bench.steady([row["seconds"] for row in run["metrics"]]))
    return measures | {"test_accuracy": run["summary"]["test_accuracy"]}


def _measures(completed: bench.Completed, times: dict) -> dict:
    return {
        "steady_epoch_seconds": bench.mean(bench.steady_epoch_seconds(times)),
        "first_epoch_seconds": times["epoch_end"][0] - times["epoch_begin"][0],
        "first_step_seconds": times["first_step"] - completed.started,
        "wall_seconds": completed.wall_seconds,
        "peak_rss_mib": completed.peak_rss_mib,
    }


def _summarise(runs: list[dict]) -> dict:
    """Median of every measure over the repetitions, plus the raw values."""
    keys = runs[0].keys()
    return {key: round(statistics.median(run[key] for run in runs), 3) for key in keys} | {
        "runs": [{key: round(value, 3) for key, value in run.items()} for run in runs]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=bench.DEFAULT_DATA, help="folder with the four .gz files")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs per run (>= 2)")
    parser.add_argument("--repetitions", type=int, default=DEFAULT_REPETITIONS, help="alternating pairs of runs")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="global batch")
    parser.add_argument("--limit", type=int, default=None, help="first N training images (default: all 60,000)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON line to this file")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: epoch 1 is excluded from the steady state")

    load_before = bench.load_average()
    results: dict[str, list[dict]] = {"plain_keras": [], "dltrain": []}
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        for repetition in range(args.repetitions):
            for name, runner in (("plain_keras", _plain), ("dltrain", _dltrain)):
                folder = Path(tmp) / f"{name}-{repetition}"
                folder.mkdir()
                results[name].append(runner(args, folder))
                print(f"{name} #{repetition + 1}: {json.dumps(results[name][-1])}", flush=True)
    plain, dltrain = _summarise(results["plain_keras"]), _summarise(results["dltrain"])
    ratio = dltrain["steady_epoch_seconds"] / plain["steady_epoch_seconds"]
    later = dltrain["first_step_seconds"] - plain["first_step_seconds"]
    bench.emit(
        {
            "benchmark": "overhead",
            "epochs": args.epochs,
            "repetitions": args.repetitions,
            "global_batch": args.batch_size,
            "limit": args.limit,
            "plain_keras": plain,
            "dltrain": dltrain,
            "steady_epoch_ratio": round(ratio, 3),
            "steady_epoch_target": STEADY_TARGET,
            "steady_epoch_met": ratio <= STEADY_TARGET,
            "first_step_later_seconds": round(later, 2),
            "first_step_target_seconds": FIRST_STEP_TARGET_SECONDS,
            "first_step_met": later <= FIRST_STEP_TARGET_SECONDS,
            "load_average_before": load_before,
            "load_average_after": bench.load_average(),
            "machine": bench.machine(),
        },
        args.output,
    )


if __name__ == "__main__":
    main()
