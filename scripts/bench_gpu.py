"""dltrain framework=jax on a GPU against plain Keras 3 `fit` on JAX (issue 26), the reference recipe (the CNN,
batch 128, all 54,000 training images), in one invocation:

1. alternating, `--repetitions` times, `--epochs` epochs each: plain Keras-JAX `fit` (scripts/plain_keras.py),
   dltrain in the driver's process on the GPU (resources.local_mode=true resources.use_gpu=true), and dltrain on
   one Ray Train GPU worker (resources=small); steady epoch and first step against plain Keras. Target: steady
   epoch <= 1.05x plain Keras-JAX.
2. the reference length, `--reference-epochs` (30), by plain Keras and by dltrain in the driver: test accuracy.
   Target: dltrain within 0.5 points of plain Keras.
3. dltrain in the driver with trainer.precision=mixed_bfloat16, and with trainer.steps_per_execution=32, beside
   plain Keras with the same setting.

Each stage is skipped when `--budget-seconds` would run out before it ends (the GPU machine is lent for minutes).
Writes every result as it comes to `--output` (a JSON line per run, then the summary), so a cut-off call keeps
what it measured. On the GPU machine (no network, no Ray or Keras), with the pack of ../shared/gpu/pack.sh:

    python3 scripts/bench_gpu.py --data .gpu-data --output $OUT/bench_gpu.jsonl
"""

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

import bench_overhead
import benchmarking as bench

DRIVER = ["resources.local_mode=true", "resources.use_gpu=true"]  # one worker, in the driver's process, on the GPU
RAY_WORKER = ["resources=small"]  # one Ray Train worker with one GPU
STEADY_TARGET = 1.05  # dltrain's steady epoch over plain Keras-JAX's (issue 26)
ACCURACY_POINTS = 0.5  # dltrain's 30-epoch test accuracy within this many points of plain Keras's (issue 26)


class Budget:
    """The seconds left of `total`; a stage runs only if its estimate fits."""

    def __init__(self, total: float):
        self.deadline = time.monotonic() + total

    def allows(self, seconds: float) -> bool:
        return time.monotonic() + seconds <= self.deadline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=bench.DEFAULT_DATA, help="folder with the four .gz files")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of each timed run (>= 2)")
    parser.add_argument("--repetitions", type=int, default=2, help="alternating rounds of the three runners")
    parser.add_argument("--reference-epochs", type=int, default=30, help="epochs of the accuracy runs")
    parser.add_argument("--budget-seconds", type=float, default=480, help="skip what would end after this")
    parser.add_argument("--limit", type=int, default=0, help="first N training images; 0: all 60,000")
    parser.add_argument("--ray-worker", default=" ".join(RAY_WORKER), help="overrides of the Ray Train worker runs")
    parser.add_argument("--stages", default="timed,reference,settings", help="which of the three stages to run")
    parser.add_argument("--output", type=Path, required=True, help="JSON lines: every run, then the summary")
    args = parser.parse_args()
    args.framework, args.batch_size = "jax", 128  # the reference recipe, on JAX
    budget, results = Budget(args.budget_seconds), {}
    output = args.output.open("a")

    def record(name: str, runner, estimate: float, arguments: argparse.Namespace = args) -> None:
        if not budget.allows(estimate):
            print(f"skipped {name}: the budget would run out", flush=True)
            return
        with tempfile.TemporaryDirectory(prefix="bench-gpu-") as folder:
            try:
                measured = runner(arguments, Path(folder))
            except RuntimeError as error:  # a run that failed: said, and the others still run
                output.write(json.dumps({"run": name, "error": str(error)[-3000:]}) + "\n")
                print(f"{name} failed: {error}", flush=True)
                return
        results.setdefault(name, []).append(measured)
        output.write(json.dumps({"run": name, **measured}) + "\n")
        output.flush()
        print(f"{name}: {json.dumps(measured)}", flush=True)

    def dltrain(*overrides: str):
        return functools.partial(bench_overhead.dltrain, variables={}, overrides=list(overrides))

    def plain(*arguments: str):
        return functools.partial(bench_overhead.plain, arguments=arguments)

    # Estimates (seconds) from the H200's plain Keras-JAX fit: ~11 s first epoch, ~1 s an epoch, start-up.
    timed = 30 + args.epochs
    runners = {
        "plain_keras": plain(),
        "dltrain_driver": dltrain(*DRIVER),
        "dltrain_ray_worker": dltrain(*args.ray_worker.split()),
    }
    stages = args.stages.split(",")
    for _ in range(args.repetitions if "timed" in stages else 0):
        for name, runner in runners.items():
            record(name, runner, timed + (20 if "ray" in name else 0))
    reference = argparse.Namespace(**vars(args) | {"epochs": args.reference_epochs})
    for name, runner in (("plain_keras reference", plain()), ("dltrain_driver reference", dltrain(*DRIVER))):
        if "reference" in stages:
            record(name, runner, 30 + args.reference_epochs, reference)

    for setting, plain_arguments, overrides in (
        ("mixed_bfloat16", ("--precision", "mixed_bfloat16"), ("trainer.precision=mixed_bfloat16",)),
        ("steps_per_execution_32", ("--steps-per-execution", "32"), ("trainer.steps_per_execution=32",)),
    ):
        if "settings" in stages:
            record(f"plain_keras {setting}", plain(*plain_arguments), timed)
            record(f"dltrain_driver {setting}", dltrain(*DRIVER, *overrides), timed)
    summaries = {name: bench_overhead.summarise(runs) for name, runs in results.items()}
    versus = {
        name: bench_overhead.versus(summary, summaries[baseline], STEADY_TARGET)
        for name, summary in summaries.items()
        for baseline in [("plain_keras " + name.split(" ", 1)[1]) if " " in name else "plain_keras"]
        if name.startswith("dltrain") and baseline in summaries
    }
    if {"plain_keras reference", "dltrain_driver reference"} <= summaries.keys():
        points = 100 * (
            summaries["dltrain_driver reference"]["test_accuracy"] - summaries["plain_keras reference"]["test_accuracy"]
        )
        versus["reference_accuracy"] = {
            "dltrain_minus_plain_points": round(points, 2),
            "target_points": ACCURACY_POINTS,
            "met": abs(points) <= ACCURACY_POINTS,
        }
    summary = {"benchmark": "gpu", "epochs": args.epochs, "repetitions": args.repetitions, **summaries,
               "versus_plain_keras": versus}  # fmt: skip
    bench.emit(summary)
    output.write(json.dumps(summary | {"machine": bench.machine()}) + "\n")
    output.close()


if __name__ == "__main__":
    main()
