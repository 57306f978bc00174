"""How dltrain scales: `python -m dltrain` with 1, 2 and 4 workers at an equal per-worker batch (global batch =
N x per-worker), samples per second of the steady epochs (training steps only, from the run's metrics.parquet)
and efficiency = samples/s at N / (N x samples/s at 1). CPU workers by default (`resources.num_workers=N
resources.use_gpu=false`: the workers share this machine's cores); `--gpu` uses resources=small/medium/large.

    python scripts/bench_scaling.py                                   # 3 epochs of 16,384 images, ~6 min on 2 cores
    python scripts/bench_scaling.py --limit 0 --epochs 5 --repetitions 2   # the full 54,000 training images
    python scripts/bench_scaling.py --gpu                             # 1, 2, 4 GPU workers on a GPU cluster

Prints one JSON line at the end.
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import benchmarking as bench

WORKER_COUNTS = (1, 2, 4)
GPU_RESOURCES = {1: "small", 2: "medium", 4: "large"}  # conf/resources options with 1 GPU per worker
# Half the reference global batch per worker, so 2 workers train the reference recipe's global batch of 128.
DEFAULT_PER_WORKER_BATCH = 64
# Enough images for ~20 steps per epoch at 4 workers, small enough that all runs take a few minutes here.
DEFAULT_LIMIT = 16384
# Epoch 1 (tracing) is excluded: 3 epochs leave 2 steady ones.
DEFAULT_EPOCHS = 3


def _run(args: argparse.Namespace, workers: int, storage: Path) -> float:
    """Steady-state training samples per second of one run with `workers` workers."""
    resources = (
        [f"resources={GPU_RESOURCES[workers]}"]
        if args.gpu
        else [f"resources.num_workers={workers}", "resources.use_gpu=false"]
    )
    command = bench.dltrain_command(
        f"dataset.path={args.data}", f"storage.uri={storage}", f"trainer.epochs={args.epochs}",
        f"trainer.batch_size={workers * args.per_worker_batch}", f"dataset.limit={args.limit or 'null'}", *resources,
    )  # fmt: skip
    completed = bench.run_command(command)
    rows = bench.read_run(bench.run_folder(completed.output, str(storage)))["metrics"]
    return bench.mean(bench.steady([row["samples_per_second"] for row in rows]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=bench.DEFAULT_DATA, help="folder with the four .gz files")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs per run (>= 2)")
    parser.add_argument("--per-worker-batch", type=int, default=DEFAULT_PER_WORKER_BATCH)
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="first N training images; 0: all 60,000")
    parser.add_argument("--repetitions", type=int, default=1, help="rounds of 1, 2, 4 workers (alternating)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker (resources=small/medium/large)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON line to this file")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: epoch 1 is excluded from the steady state")

    load_before = bench.load_average()
    rates: dict[int, list[float]] = {workers: [] for workers in WORKER_COUNTS}
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        for repetition in range(args.repetitions):
            for workers in WORKER_COUNTS:
                rates[workers].append(_run(args, workers, Path(tmp) / "runs"))
                print(f"#{repetition + 1}: {workers} worker(s): {rates[workers][-1]:.0f} samples/s", flush=True)
    single = statistics.median(rates[1])
    bench.emit(
        {
            "benchmark": "scaling",
            "device": "gpu" if args.gpu else "cpu",
            "epochs": args.epochs,
            "limit": args.limit or None,
            "per_worker_batch": args.per_worker_batch,
            "workers": {
                str(workers): {
                    "global_batch": workers * args.per_worker_batch,
                    "samples_per_second": round(statistics.median(values)),
                    "efficiency": round(statistics.median(values) / (workers * single), 3),
                    "runs": [round(value) for value in values],
                }
                for workers, values in rates.items()
            },
            "load_average_before": load_before,
        },
        args.output,
    )


if __name__ == "__main__":
    main()
