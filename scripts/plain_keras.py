"""Baseline: the reference recipe trained by plain single-process Keras 3 `model.fit`, no Ray, no dltrain loop.

Same data, split, model and hyperparameters as `python -m dltrain model=fashion`, so the two can be compared:

    python scripts/plain_keras.py --data ../shared/data/fashion-mnist --epochs 30

Prints one JSON line at the end: test accuracy and loss, wall and per-epoch seconds. `--timeline FILE` records
the wall-clock times of the first step and every epoch (scripts/timeline.py) for the benchmarks.
"""

import argparse
import json
import time

import keras
from timeline import Timeline

from dltrain.data import fashion_mnist
from dltrain.data.pipeline import train_validation_split
from dltrain.models.cnn import build_cnn


class _EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder with the four Fashion-MNIST .gz files")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=0.001)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--timeline", default=None, help="write the first step's and each epoch's times here")
    # Keras 3's own default: XLA where the model supports it, as a user calling fit() gets.
    parser.add_argument("--jit-compile", choices=["auto", "true", "false"], default="auto")
    parser.add_argument("--steps-per-execution", type=int, default=1)
    parser.add_argument("--precision", choices=["float32", "mixed_float16", "mixed_bfloat16"], default="float32")
    args = parser.parse_args()

    started = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    (images, labels), (test_images, test_labels) = fashion_mnist.load(fashion_mnist.prepare(args.data, ""))
    train, validation = train_validation_split(images, labels, 0.1, args.seed, args.limit)
    keras.config.set_dtype_policy(args.precision)
    model = build_cnn(fashion_mnist.INPUT_SHAPE, len(fashion_mnist.CLASS_NAMES))
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile={"auto": "auto", "true": True, "false": False}[args.jit_compile],
        steps_per_execution=args.steps_per_execution,
    )
    timer = _EpochTimer()
    callbacks = [timer, *([Timeline(args.timeline)] if args.timeline else [])]
    model.fit(
        train.images / 255.0,
        train.labels,
        batch_size=args.batch_size,
        epochs=args.epochs,
        validation_data=(validation.images / 255.0, validation.labels),
        callbacks=callbacks,
        verbose=2,
    )
    test_loss, test_accuracy = model.evaluate(test_images / 255.0, test_labels, verbose=0)
    steady = timer.seconds[1:] or timer.seconds
    print(
        json.dumps(
            {
                "runner": "plain_keras",
                "backend": keras.backend.backend(),
                "epochs": args.epochs,
                "test_accuracy": round(test_accuracy, 4),
                "test_loss": round(test_loss, 4),
                "wall_seconds": round(time.perf_counter() - started, 1),
                "steady_epoch_seconds": round(sum(steady) / len(steady), 2),
                "jit_compile": model.jit_compile,
            }
        )
    )


if __name__ == "__main__":
    main()
