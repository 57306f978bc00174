"""Where a `python -m dltrain` run's time goes, by process: when each process of the tree (the driver, Ray's
GCS, raylet and agents, Ray Train's controller and helper actors, the training worker) appeared, its CPU
seconds during start-up (command start to the first training step) and its share of a core during the steady
epochs (epoch 2 onwards), plus the worker's niceness. One worker, as `bench_overhead.py` runs it.

    python scripts/bench_processes.py                                 # 3 epochs of 16,384 images, ~3 min
    python scripts/bench_processes.py --env RAY_worker_niceness=0     # with a Ray setting to try

Prints one JSON line at the end.
"""

import argparse
import json
import tempfile
from pathlib import Path

import benchmarking as bench

# As bench_overhead.py: 115 steps of 128 per epoch, epoch 1 excluded from the steady state.
DEFAULT_LIMIT = 16384
DEFAULT_EPOCHS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=bench.DEFAULT_DATA, help="folder with the four .gz files")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs (>= 2)")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="first N training images; 0: all 60,000")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra variable (repeatable)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON line to this file")
    args = parser.parse_args()

    load_before = bench.load_average()
    with tempfile.TemporaryDirectory(prefix="bench-processes-") as tmp:
        timeline = Path(tmp) / "timeline.json"
        command = bench.dltrain_command(
            f"dataset.path={args.data}", f"storage.uri={tmp}/runs", f"trainer.epochs={args.epochs}",
            f"dataset.limit={args.limit or 'null'}", bench.timeline_override(timeline),
        )  # fmt: skip
        completed = bench.run_command(command, bench.environment(**dict(item.split("=", 1) for item in args.env)))
        times = json.loads(timeline.read_text())
    tree = completed.tree
    first_step, (steady_start, steady_end) = times["first_step"], (times["epoch_begin"][1], times["train_end"])
    processes = []
    for record in sorted(tree.processes.values(), key=lambda record: record["first_seen"]):
        samples = record["samples"]
        startup = tree.cpu_seconds_at(first_step, samples)
        steady = tree.cpu_seconds_at(steady_end, samples) - tree.cpu_seconds_at(steady_start, samples)
        processes.append(
            {
                "name": record["name"],
                "nice": record["nice"],
                "appeared_seconds": round(record["first_seen"] - completed.started, 1),
                "startup_cpu_seconds": round(startup, 2),
                "steady_core_share": round(steady / (steady_end - steady_start), 4),
            }
        )
    worker = "ray::RayTrainWorker"
    background = sum(process["steady_core_share"] for process in processes if process["name"] != worker)
    bench.emit(
        {
            "benchmark": "processes",
            "env": args.env,
            "first_step_seconds": round(first_step - completed.started, 1),
            "steady_epoch_seconds": round(bench.mean(bench.steady_epoch_seconds(times)), 2),
            "steady_background_core_share": round(background, 4),
            "processes": processes,
            "load_average_before": load_before,
        },
        args.output,
    )


if __name__ == "__main__":
    main()
