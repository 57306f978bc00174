"""Steps per execution: dltrain's `DistributedLoop` at `steps_per_execution` K=1 and K=32 against Keras 3's
`model.fit` at the same K, on (a) an MLP (Flatten, Dense 128 relu, Dense 10 softmax), whose step is so small that
the per-call overhead shows, and (b) the reference CNN (dltrain/models/cnn.py). In one process, with the default
strategy (no Ray), alternating (dltrain K=1, Keras K=1, dltrain K=32, Keras K=32, and again), so all four see the
same load. Both loops get the same input: the batches of `train_batches` (the seeded shuffle of epoch 0, scaled),
in memory, which each epoch trains on again; there is no validation, so an epoch is training only.

Per runner: steady seconds per epoch (every epoch but each run's first, which traces the step), wall and this
process's CPU seconds (the work, whatever else shares the cores), median over the repetitions. jit_compile is
each side's `auto` (XLA on a GPU, off on CPUs). Target: dltrain at K=32 within 1.05x of Keras at K=32 on the MLP.

    python scripts/bench_steps.py                                 # MLP on 54,000 images, CNN on 8,192; ~3 min
    python scripts/bench_steps.py --cnn-limit 0                   # the CNN on all 54,000 images too (~10 min)

Prints one JSON line at the end.
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import benchmarking as bench
import numpy as np

DEFAULT_BATCH = 128  # the reference recipe's global batch
EXECUTIONS = (1, 32)  # steps per execution compared
# 3 epochs per run: the first traces the step, the other 2 are steady.
DEFAULT_EPOCHS = 3
DEFAULT_REPETITIONS = 3
# The CNN's epoch on 2 cores takes ~15 s on all 54,000 images: 8,192 (57 steps) keeps the script near 3 minutes.
DEFAULT_CNN_LIMIT = 8192
TARGET = 1.05  # dltrain's MLP epoch at K=32 over Keras fit's at K=32


def _mlp(input_shape: tuple[int, ...], num_classes: int):
    import keras

    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(num_classes, activation="softmax"),
        ],
        name="mlp",
    )


class _Workload:
    """One model's data and its four runners' per-epoch seconds."""

    def __init__(self, name: str, build, train, args: argparse.Namespace, folder: Path):
        from dltrain.data.pipeline import steps_per_epoch, train_batches

        self.name, self.build, self.train, self.args, self.folder = name, build, train, args, folder
        self.steps = steps_per_epoch(len(train.images), args.batch_size)
        # Epoch 0's seeded shuffle, scaled, in memory: every epoch of every runner trains on these batches.
        self.batches = list(train_batches(train, args.batch_size, args.seed, 0, 1, 0))

    def _model(self, steps_per_execution: int):
        """The seeded model, compiled as dltrain compiles it; `steps_per_execution` is for Keras' fit."""
        import keras

        from dltrain.data import fashion_mnist

        keras.utils.set_random_seed(self.args.seed)
        model = self.build(fashion_mnist.INPUT_SHAPE, len(fashion_mnist.CLASS_NAMES))
        model.compile(
            optimizer="adam",
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            steps_per_execution=steps_per_execution,
        )
        return model

    def dltrain(self, steps_per_execution: int) -> dict:
        import keras
        from timeline import Timeline

        from dltrain.data import fashion_mnist
        from dltrain.engine.loop import DistributedLoop
        from dltrain.frameworks.tensorflow import Training

        keras.utils.set_random_seed(self.args.seed)
        training = Training(workers=1, deterministic=False, use_gpu=True)  # XLA where there is a GPU, as Keras
        with training.scope():
            model = self.build(fashion_mnist.INPUT_SHAPE, len(fashion_mnist.CLASS_NAMES))
            model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        steps = training.steps(model, self.args.batch_size, jit_compile="auto")
        loop = DistributedLoop(model, steps, self.args.batch_size, steps_per_execution)
        timeline = Timeline(self.folder / "timeline.json")
        loop.fit(lambda epoch: iter(self.batches), self.steps, self.args.epochs, callbacks=[timeline])
        return timeline.times

    def keras(self, steps_per_execution: int) -> dict:
        from timeline import Timeline

        model = self._model(steps_per_execution)
        timeline = Timeline(self.folder / "timeline.json")
        images = np.concatenate([images for images, _ in self.batches])
        labels = np.concatenate([labels for _, labels in self.batches])
        model.fit(images, labels, batch_size=self.args.batch_size, shuffle=False, epochs=self.args.epochs,
                  callbacks=[timeline], verbose=0)  # fmt: skip
        return timeline.times


def _epoch_seconds(times: dict, clock: str) -> list[float]:
    """Each epoch's seconds from its begin to its end callback, as a Timeline recorded them: wall seconds
    (`clock` ""), or this process's CPU seconds (`clock` "_cpu"), which measure the work whatever the load."""
    return [end - begin for begin, end in zip(times[f"epoch_begin{clock}"], times[f"epoch_end{clock}"], strict=True)]


def _measure(workload: _Workload, repetitions: int) -> dict:
    """Each runner's steady epochs, alternating, and the ratios: dltrain over Keras at each K, K=1 over K=32."""
    runs: dict[str, dict[str, list[float]]] = {}
    for repetition in range(repetitions):
        for k in EXECUTIONS:
            for side in ("dltrain", "keras"):
                times = getattr(workload, side)(k)
                run = runs.setdefault(f"{side}_k{k}", {"wall": [], "cpu": []})
                run["wall"] += bench.steady(_epoch_seconds(times, ""))
                run["cpu"] += bench.steady(_epoch_seconds(times, "_cpu"))
                seconds = [round(value, 3) for value in _epoch_seconds(times, "")]
                print(f"{workload.name} {side} K={k} #{repetition + 1}: {seconds} s", flush=True)
    summary: dict = {"steps_per_epoch": workload.steps}
    for clock in ("wall", "cpu"):
        median = {name: statistics.median(run[clock]) for name, run in runs.items()}
        summary[clock] = {
            "steady_epoch_seconds": {name: round(value, 3) for name, value in median.items()},
            **{f"dltrain_over_keras_k{k}": round(median[f"dltrain_k{k}"] / median[f"keras_k{k}"], 3)
               for k in EXECUTIONS},
            "dltrain_k1_over_k32": round(median["dltrain_k1"] / median["dltrain_k32"], 3),
            "keras_k1_over_k32": round(median["keras_k1"] / median["keras_k32"], 3),
        }  # fmt: skip
    summary["runs"] = {name: {clock: [round(v, 3) for v in values] for clock, values in run.items()}
                       for name, run in runs.items()}  # fmt: skip
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=bench.DEFAULT_DATA, help="folder with the four .gz files")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs per run (>= 2)")
    parser.add_argument("--repetitions", type=int, default=DEFAULT_REPETITIONS, help="alternating rounds")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--cnn-limit", type=int, default=DEFAULT_CNN_LIMIT, help="CNN: first N images; 0: all")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON line to this file")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: epoch 1 is excluded from the steady state")

    from dltrain.data import fashion_mnist
    from dltrain.data.pipeline import train_validation_split
    from dltrain.models.cnn import build_cnn

    load_before = bench.load_average()
    (images, labels), _ = fashion_mnist.load(fashion_mnist.prepare(str(args.data), ""))
    splits = {
        "mlp": train_validation_split(images, labels, 0.1, args.seed)[0],
        "cnn": train_validation_split(images, labels, 0.1, args.seed, args.cnn_limit or None)[0],
    }
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-steps-") as tmp:
        for name, build in (("mlp", _mlp), ("cnn", build_cnn)):
            results[name] = _measure(_Workload(name, build, splits[name], args, Path(tmp)), args.repetitions)
            print(f"{name}: {json.dumps({clock: results[name][clock] for clock in ('wall', 'cpu')})}", flush=True)
    ratio = results["mlp"]["wall"]["dltrain_over_keras_k32"]
    bench.emit(
        {
            "benchmark": "steps_per_execution",
            "epochs": args.epochs,
            "repetitions": args.repetitions,
            "global_batch": args.batch_size,
            "cnn_limit": args.cnn_limit or None,
            **results,
            "target": TARGET,
            "met": ratio <= TARGET,
            "load_average_before": load_before,
        },
        args.output,
    )


if __name__ == "__main__":
    main()
