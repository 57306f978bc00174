"""Transfer learning on Fashion-MNIST, end to end and offline: the table in README.md ("Transfer learning").

1. pretrain: experiment=fashion_pretrain_0_4, a MobileNetV2 backbone from scratch on classes 0-4;
2. before: the same architecture from scratch on the small budget of classes 5-9 (experiment=fashion_transfer_5_9
   with model.weights=none model.freeze=false, at Adam's default learning rate);
3. after: a new head on the frozen pretrained backbone, on the same budget (model.weights=run:PRETRAIN_ID);
4. fine-tune: the transferred model with its base unfrozen, at a tenth of the learning rate.
Steps 2-4 are tested on the same 5,000 test images of classes 5-9.

    python scripts/transfer.py --data ../shared/data/fashion-mnist --storage /tmp/transfer
    python scripts/transfer.py ... --pretrain-per-class 1000 --pretrain-epochs 3 --epochs 5    # a quicker version

Prints a Markdown table and, with --json FILE, writes {step: {run_id, test_accuracy, wall_seconds, command}}.
"""

import argparse
import json
import subprocess
import sys
import time


def _train(overrides: list[str], storage: str) -> tuple[str, float]:
    """Run `python -m dltrain` with `overrides` into `storage`; returns (run id, test accuracy)."""
    command = [sys.executable, "-m", "dltrain", *overrides, f"storage.uri={storage}", "trainer.progress=epochs"]
    print("$", " ".join(command[1:]), flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {result.stderr.strip().splitlines()[-1:]}")
    completed = next(line for line in result.stdout.splitlines() if " COMPLETED: " in line)
    run_id = completed.split()[2]
    accuracy = float(completed.split("test_accuracy ")[1].split()[0])
    print(completed, flush=True)
    return run_id, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the Fashion-MNIST folder (dataset.path)")
    parser.add_argument("--storage", required=True, help="the run store (storage.uri)")
    parser.add_argument("--pretrain-per-class", type=int, help="images per class for pretraining (default: all)")
    parser.add_argument("--pretrain-epochs", type=int, help="(default: the experiment's)")
    parser.add_argument("--per-class", type=int, help="the small budget per class of 5-9 (default: the experiment's)")
    parser.add_argument("--epochs", type=int, help="epochs of steps 2-4 (default: the experiment's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every step, e.g. trainer.deterministic=true")  # fmt: skip
    parser.add_argument("--skip-fine-tune", action="store_true", help="stop after step 3")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    common = [f"dataset.path={args.data}", *args.set]
    pretrain = ["experiment=fashion_pretrain_0_4", *common]
    pretrain += [f"dataset.per_class={args.pretrain_per_class}"] if args.pretrain_per_class else []
    pretrain += [f"trainer.epochs={args.pretrain_epochs}"] if args.pretrain_epochs else []
    transfer = ["experiment=fashion_transfer_5_9", *common]
    transfer += [f"dataset.per_class={args.per_class}"] if args.per_class else []
    transfer += [f"trainer.epochs={args.epochs}"] if args.epochs else []

    results: dict[str, dict] = {}

    def step(name: str, overrides: list[str]) -> str:
        started = time.monotonic()
        run_id, accuracy = _train(overrides, args.storage)
        results[name] = {"run_id": run_id, "test_accuracy": accuracy, "command": " ".join(overrides),
                         "wall_seconds": round(time.monotonic() - started, 1)}  # fmt: skip
        return run_id

    pretrained = step("pretrain", pretrain)
    step("before", [*transfer, "model.weights=none", "model.freeze=false", "trainer.learning_rate=0.001"])
    after = step("after", [*transfer, f"model.weights=run:{pretrained}"])
    if not args.skip_fine_tune:
        step("fine-tune", [*transfer, f"model.weights=run:{after}", "model.freeze=false",
                           "model.head.from_weights=true", "trainer.learning_rate=0.0001"])  # fmt: skip

    print("\n| step | test accuracy | classes | wall | run |\n|---|---|---|---|---|")
    for name in results:
        result = results[name]
        classes = "0-4" if name == "pretrain" else "5-9"
        print(f"| {name} | {result['test_accuracy']:.4f} | {classes} | {result['wall_seconds']:.0f} s | "
              f"{result['run_id']} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
