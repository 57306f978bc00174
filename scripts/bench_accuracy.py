"""Accuracy on the real data: the reference recipe (model=fashion, global batch 128, 30 epochs) trained by plain
single-process Keras 3 `model.fit` (scripts/plain_keras.py) and by `python -m dltrain` with one worker, alternately
for each seed: test accuracy, wall time and peak memory of each, and dltrain's gap. Target: within 0.5 points.
`--experiment NAME` also trains `python -m dltrain experiment=NAME` (a tuned recipe; plain_keras.py has no twin of
it) for each seed. Target for experiment=fashion_tuned: test accuracy >= 0.935 in its 30 epochs.

    python scripts/bench_accuracy.py                                  # seed 42: one plain / dltrain pair
    python scripts/bench_accuracy.py --seeds 42 7                     # two seeds, alternating
    python scripts/bench_accuracy.py --experiment fashion_tuned       # plus the tuned recipe
    python scripts/bench_accuracy.py --epochs 2 --limit 4096          # a quick check of the script itself

Prints one JSON line at the end.
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import benchmarking as bench

DEFAULT_SEEDS = [42]
DEFAULT_EPOCHS = 30  # the reference recipe's
GAP_TARGET = 0.005  # dltrain's test accuracy within 0.5 points of plain Keras's
TUNED_TARGET = 0.935  # experiment=fashion_tuned: above the Fashion-MNIST benchmark's small-CNN rows (0.926, 0.934)


def _plain(args: argparse.Namespace, seed: int, folder: Path) -> dict:
    command = bench.plain_keras_command(
        "--data", str(args.data), "--epochs", str(args.epochs), "--seed", str(seed),
        *(["--limit", str(args.limit)] if args.limit else []),
    )  # fmt: skip
    completed = bench.run_command(command)
    result = bench.last_json_line(completed.output)
    return _measures(completed, result["test_accuracy"], result["test_loss"])


def _dltrain(args: argparse.Namespace, seed: int, folder: Path, *overrides: str) -> dict:
    storage = str(folder / "runs")
    command = bench.dltrain_command(
        f"dataset.path={args.data}", f"storage.uri={storage}", f"trainer.epochs={args.epochs}",
        f"trainer.seed={seed}", f"dataset.limit={args.limit or 'null'}", *overrides,
    )  # fmt: skip
    completed = bench.run_command(command)
    run = bench.read_run(bench.run_folder(completed.output, storage))
    summary = run["summary"]
    measures = _measures(completed, summary["test_accuracy"], summary["test_loss"])
    return measures | {"best_val_accuracy": round(max(row["val_accuracy"] for row in run["metrics"]), 4)}


def _measures(completed: bench.Completed, test_accuracy: float, test_loss: float) -> dict:
    return {
        "test_accuracy": round(test_accuracy, 4),
        "test_loss": round(test_loss, 4),
        "wall_seconds": round(completed.wall_seconds, 1),
        "peak_rss_mib": round(completed.peak_rss_mib),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=bench.DEFAULT_DATA, help="folder with the four .gz files")
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS, help="one run per runner and seed")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--limit", type=int, default=0, help="first N training images; 0: all 60,000")
    parser.add_argument("--experiment", default=None, help="also train dltrain experiment=NAME for each seed")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON line to this file")
    args = parser.parse_args()

    load_before = bench.load_average()
    runners = {"plain_keras": _plain, "dltrain": _dltrain}
    if args.experiment:
        runners[f"dltrain experiment={args.experiment}"] = lambda args, seed, folder: _dltrain(
            args, seed, folder, f"experiment={args.experiment}"
        )
    results: dict[str, dict[int, dict]] = {name: {} for name in runners}
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as tmp:
        for seed in args.seeds:
            for index, (name, runner) in enumerate(runners.items()):
                folder = Path(tmp) / f"{index}-{seed}"
                folder.mkdir()
                results[name][seed] = runner(args, seed, folder)
                print(f"{name} seed {seed}: {results[name][seed]}", flush=True)
    gaps = [
        results["dltrain"][seed]["test_accuracy"] - results["plain_keras"][seed]["test_accuracy"] for seed in args.seeds
    ]
    summary = {
        "benchmark": "accuracy",
        "epochs": args.epochs,
        "limit": args.limit or None,
        "seeds": args.seeds,
        **{name: {str(seed): measures for seed, measures in by_seed.items()} for name, by_seed in results.items()},
        "dltrain_minus_plain_keras": {
            "test_accuracy_gaps": [round(gap, 4) for gap in gaps],
            "mean_gap": round(statistics.mean(gaps), 4),
            "target": GAP_TARGET,
            "met": abs(statistics.mean(gaps)) <= GAP_TARGET,
        },
        "load_average_before": load_before,
    }
    if args.experiment:
        tuned = [measures["test_accuracy"] for measures in results[f"dltrain experiment={args.experiment}"].values()]
        summary["experiment"] = {"name": args.experiment, "mean_test_accuracy": round(statistics.mean(tuned), 4)}
        if args.experiment == "fashion_tuned":
            summary["experiment"] |= {"target": TUNED_TARGET, "met": min(tuned) >= TUNED_TARGET}
    bench.emit(summary, args.output)


if __name__ == "__main__":
    main()
