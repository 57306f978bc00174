"""What dltrain costs over plain Keras: the reference Fashion-MNIST CNN trained by plain single-process Keras 3
`model.fit` (scripts/plain_keras.py) and by `python -m dltrain` with one worker, same data, global batch and
epochs, run alternately (plain, dltrain, plain, dltrain, ...) so both see the same load from other jobs.

Per runner: steady-state seconds per epoch (epoch start to next epoch start, epoch 1 excluded, so it includes
validation and dltrain's per-epoch checkpoint and uploads), epoch 1's seconds (tracing and compilation), time
from the command's start to the first training step, whole-process wall time and peak memory (summed RSS of the
process tree, Ray's processes included). Targets: steady epoch <= 1.02x plain Keras; first step <= 3 s later.

    python scripts/bench_overhead.py                                  # 3 epochs of 16,384 images x 2 repetitions
    python scripts/bench_overhead.py --limit 0 --epochs 5 --repetitions 3   # the full-size version (54,000 images)
    python scripts/bench_overhead.py --dltrain-env RAY_worker_niceness=0    # plus dltrain with Ray workers at nice 0
    python scripts/bench_overhead.py --dltrain-override resources.local_mode=false   # plus a Ray Train worker
    python scripts/bench_overhead.py --framework jax --dltrain-override framework=tensorflow   # JAX, and TF beside

Prints one JSON line at the end.
"""

import argparse
import functools
import json
import statistics
import tempfile
from pathlib import Path

import benchmarking as bench

# The reference recipe's global batch, so the per-step work matches `python -m dltrain model=fashion`.
DEFAULT_BATCH = 128
# 16,384 images (14,746 after the validation split, 115 steps): with the cores shared, full epochs made one
# alternating pair take half an hour. --limit 0 trains on all of them.
DEFAULT_LIMIT = 16384
# Epoch 1 is excluded from the steady state, so 3 epochs give 2 steady ones per run.
DEFAULT_EPOCHS = 3
# Two alternating pairs: each runner is seen twice under comparable load.
DEFAULT_REPETITIONS = 2
STEADY_TARGET = 1.02  # dltrain's steady epoch over plain Keras's (issue 15)
FIRST_STEP_TARGET_SECONDS = 3.0  # how much later dltrain may start its first step (issue 15)


def plain(args: argparse.Namespace, folder: Path, arguments: tuple[str, ...] = ()) -> dict:
    """scripts/plain_keras.py on `args.framework` (Keras' backend), with more `arguments`: its measures."""
    timeline = folder / "plain-timeline.json"
    command = bench.plain_keras_command(
        "--data", str(args.data), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        "--timeline", str(timeline), *(["--limit", str(args.limit)] if args.limit else []), *arguments,
    )  # fmt: skip
    completed = bench.run_command(command, bench.environment(KERAS_BACKEND=args.framework))
    result = bench.last_json_line(completed.output)
    return _measures(completed, json.loads(timeline.read_text())) | {"test_accuracy": result["test_accuracy"]}


def dltrain(args: argparse.Namespace, folder: Path, variables: dict[str, str], overrides: list[str]) -> dict:
    """`python -m dltrain` on `args.framework` with `overrides` and environment `variables`: its measures."""
    timeline, storage = folder / "dltrain-timeline.json", str(folder / "runs")
    command = bench.dltrain_command(
        f"dataset.path={args.data}", f"storage.uri={storage}", f"trainer.epochs={args.epochs}",
        f"trainer.batch_size={args.batch_size}", f"dataset.limit={args.limit or 'null'}",
        f"framework={args.framework}", bench.timeline_override(timeline), *overrides,
    )  # fmt: skip
    completed = bench.run_command(command, bench.environment(**variables))
    run = bench.read_run(bench.run_folder(completed.output, storage))
    measures = _measures(completed, json.loads(timeline.read_text()))
    # dltrain's own per-epoch `seconds` (train + validation, without the epoch-end checkpoint) for reference.
    measures["metrics_steady_epoch_seconds"] = bench.mean(bench.steady([row["seconds"] for row in run["metrics"]]))
    return measures | {"test_accuracy": run["summary"]["test_accuracy"]}


def _measures(completed: bench.Completed, times: dict) -> dict:
    return {
        "steady_epoch_seconds": bench.mean(bench.steady_epoch_seconds(times)),
        # The same epochs in CPU seconds of the whole process tree: the work, whatever else shares the cores.
        "steady_epoch_cpu_seconds": bench.mean(
            [completed.cpu_seconds_between(start, end) for start, end in bench.steady_epochs(times)]
        ),
        "first_epoch_seconds": times["epoch_end"][0] - times["epoch_begin"][0],
        "first_step_seconds": times["first_step"] - completed.started,
        "wall_seconds": completed.wall_seconds,
        "peak_rss_mib": completed.peak_rss_mib,
    }


def summarise(runs: list[dict]) -> dict:
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
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="first N training images; 0: all 60,000")
    parser.add_argument(
        "--dltrain-env", action="append", metavar="NAME=VALUE",
        help="also run dltrain with this environment variable (repeatable; one more alternating runner)",
    )  # fmt: skip
    parser.add_argument(
        "--dltrain-override", action="append", metavar="KEY=VALUE",
        help="also run dltrain with this config override (repeatable; one more alternating runner)",
    )  # fmt: skip
    parser.add_argument("--framework", choices=["tensorflow", "jax"], default="tensorflow",
                        help="Keras' backend of both runners: plain Keras and dltrain's framework=")  # fmt: skip
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON line to this file")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: epoch 1 is excluded from the steady state")

    load_before = bench.load_average()
    runners = {"plain_keras": plain, "dltrain": functools.partial(dltrain, variables={}, overrides=[])}
    if args.dltrain_env:  # the same dltrain run with extra environment variables, e.g. a Ray setting to try
        variables = dict(item.split("=", 1) for item in args.dltrain_env)
        runners[f"dltrain {' '.join(args.dltrain_env)}"] = functools.partial(dltrain, variables=variables, overrides=[])
    if args.dltrain_override:  # the same dltrain run with extra config overrides
        runners[f"dltrain {' '.join(args.dltrain_override)}"] = functools.partial(
            dltrain, variables={}, overrides=args.dltrain_override
        )
    results: dict[str, list[dict]] = {name: [] for name in runners}
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        for repetition in range(args.repetitions):
            for index, (name, runner) in enumerate(runners.items()):
                folder = Path(tmp) / f"{index}-{repetition}"
                folder.mkdir()
                results[name].append(runner(args, folder))
                print(f"{name} #{repetition + 1}: {json.dumps(results[name][-1])}", flush=True)
    summaries = {name: summarise(runs) for name, runs in results.items()}
    bench.emit(
        {
            "benchmark": "overhead",
            "framework": args.framework,
            "epochs": args.epochs,
            "repetitions": args.repetitions,
            "global_batch": args.batch_size,
            "limit": args.limit or None,
            **summaries,
            "versus_plain_keras": {
                name: versus(summary, summaries["plain_keras"])
                for name, summary in summaries.items()
                if name != "plain_keras"
            },
            "load_average_before": load_before,
        },
        args.output,
    )


def versus(measured: dict, baseline: dict, steady_target: float = STEADY_TARGET) -> dict:
    """dltrain's figures (`measured`) against plain Keras's (`baseline`), and whether they meet the targets."""
    ratio = measured["steady_epoch_seconds"] / baseline["steady_epoch_seconds"]
    later = measured["first_step_seconds"] - baseline["first_step_seconds"]
    return {
        "steady_epoch_ratio": round(ratio, 3),
        "steady_epoch_cpu_ratio": round(measured["steady_epoch_cpu_seconds"] / baseline["steady_epoch_cpu_seconds"], 3),
        "steady_epoch_target": steady_target,
        "steady_epoch_met": ratio <= steady_target,
        "first_step_later_seconds": round(later, 2),
        "first_step_target_seconds": FIRST_STEP_TARGET_SECONDS,
        "first_step_met": later <= FIRST_STEP_TARGET_SECONDS,
    }


if __name__ == "__main__":
    main()
