"""Can dltrain's input pipeline feed training? Samples per second of the data pipeline alone
(`dltrain.data.pipeline.train_batches` for one epoch, iterated as a worker iterates it: the epoch's seeded
shuffle, this worker's slices, scaling, prefetch) versus samples per second of dltrain's training steps alone
(`DistributedLoop` on one batch already in memory, so no input pipeline at all). Alternated, in one process.
Target: the pipeline delivers >= 5x what training consumes.

With --shards N, the pipeline is dataset=image_folder's instead: N of the images written as PNG files, prepared
into Parquet shards, and streamed from them, decoded and resized with Pillow and augmented in NumPy (image_folder.py).

    python scripts/bench_pipeline.py                                  # 2 epochs of 54,000 images, ~1 min
    python scripts/bench_pipeline.py --repetitions 5 --workers 2      # worker 0 of 2 (half of every batch)
    python scripts/bench_pipeline.py --shards 20000                   # PNGs from Parquet shards, for the CNN
    python scripts/bench_pipeline.py --shards 20000 --model mobilenet_v2 --image-size 32   # ... for a backbone

Prints one JSON line at the end.
"""

import argparse
import itertools
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import benchmarking as bench

# The reference recipe's global batch.
DEFAULT_BATCH = 128
# Training steps timed per repetition: ~100 steps is a few seconds on 2 cores, well past tracing.
DEFAULT_STEPS = 100
# Alternating pipeline / training measurements.
DEFAULT_REPETITIONS = 2
TARGET = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=bench.DEFAULT_DATA, help="folder with the four .gz files")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="global batch")
    parser.add_argument("--workers", type=int, default=1, help="measure worker 0 of this many (its share of a batch)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps timed per repetition")
    parser.add_argument("--repetitions", type=int, default=DEFAULT_REPETITIONS)
    parser.add_argument(
        "--shards", type=int, default=0, metavar="N", help="stream N images as PNGs from shards (0: from memory)"
    )
    parser.add_argument("--model", default="cnn", choices=["cnn", "mobilenet_v2"], help="what training runs")
    parser.add_argument("--image-size", type=int, default=28, help="with --shards: the images are resized to this")
    parser.add_argument("--augment", action="store_true", help="with --shards: flip and shift the training images")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON line to this file")
    args = parser.parse_args()

    from dltrain.data import fashion_mnist
    from dltrain.data.pipeline import Batch, train_batches, train_validation_split
    from dltrain.engine.loop import DistributedLoop
    from dltrain.frameworks.tensorflow import Training
    from dltrain.models.backbone import build_backbone
    from dltrain.models.cnn import build_cnn

    load_before = bench.load_average()
    seed = 42  # the default trainer.seed
    (images, labels), _ = fashion_mnist.load(fashion_mnist.prepare(str(args.data), ""))
    train, _ = train_validation_split(images, labels, 0.1, seed)

    folder = tempfile.TemporaryDirectory(prefix="bench-pipeline-")
    if args.shards:
        feed = _shard_feed(train, args.shards, Path(folder.name), args.image_size, seed, args.augment)
        input_shape = (args.image_size, args.image_size, 1)

        def epoch_batches(epoch: int) -> Iterator[Batch]:
            return feed.train(args.batch_size, seed, epoch, args.workers, 0)
    else:
        input_shape = fashion_mnist.INPUT_SHAPE

        def epoch_batches(epoch: int) -> Iterator[Batch]:
            return train_batches(train, args.batch_size, seed, epoch, args.workers, 0)

    training = Training(workers=1, deterministic=False, use_gpu=False)  # as a lone worker builds it (no TF_CONFIG)
    with training.scope():
        if args.model == "cnn":
            model = build_cnn(input_shape, len(fashion_mnist.CLASS_NAMES))
        else:
            model = build_backbone(input_shape, len(fashion_mnist.CLASS_NAMES), args.model)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    # Training alone: DistributedLoop.fit over one batch repeated (the worker's share of a global batch, as on
    # worker 0 of N), so its samples/s are what the steps consume with no input pipeline to wait for.
    loop = DistributedLoop(model, training.steps(model, args.batch_size, jit_compile=False), args.batch_size)
    batch = next(iter(epoch_batches(0)))
    loop.fit(lambda epoch: itertools.repeat(batch, 2), 2, 1)  # trace (and compile) the step outside the timing

    pipeline_rates, training_rates = [], []
    for repetition in range(args.repetitions):
        started, samples = time.perf_counter(), 0
        for batch_images, _labels in epoch_batches(repetition):
            samples += int(batch_images.shape[0])
        pipeline_rates.append(samples / (time.perf_counter() - started))

        history = loop.fit(lambda epoch: itertools.repeat(batch, args.steps), args.steps, 1)
        training_rates.append(history[-1]["samples_per_second"] / args.workers)  # this worker's share
        print(f"#{repetition + 1}: pipeline {pipeline_rates[-1]:.0f}, training {training_rates[-1]:.0f} samples/s")

    pipeline, training = bench.mean(pipeline_rates), bench.mean(training_rates)
    bench.emit(
        {
            "benchmark": "pipeline",
            "source": f"{args.shards} PNGs in Parquet shards, resized to {args.image_size}"
            if args.shards
            else "memory",
            "model": args.model,
            "global_batch": args.batch_size,
            "workers": args.workers,
            "samples_per_epoch": samples,  # this worker's
            "pipeline_samples_per_second": round(pipeline),
            "training_samples_per_second": round(training),
            "pipeline_runs": [round(rate) for rate in pipeline_rates],
            "training_runs": [round(rate) for rate in training_rates],
            "ratio": round(pipeline / training, 2),
            "target": TARGET,
            "met": pipeline / training >= TARGET,
            "load_average_before": load_before,
        },
        args.output,
    )


def _shard_feed(train, count: int, folder: Path, image_size: int, seed: int, augment: bool):
    """`count` training images written as CLASS/N.png, prepared as dltrain prepares a folder, and the
    ShardBatches a worker streams them from (with `augment`: dataset.flip=true, dataset.shift=2)."""
    import io

    from PIL import Image

    from dltrain.data import image_folder
    from dltrain.job import ImageFolderConfig, StorageConfig

    for index in range(count):
        (folder / "images" / str(train.labels[index])).mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(train.images[index][..., 0], mode="L").save(buffer, format="PNG")
        (folder / "images" / str(train.labels[index]) / f"{index}.png").write_bytes(buffer.getvalue())
    dataset = ImageFolderConfig(
        name="image_folder", path=str(folder / "images"), manifest=None, label="class", min_per_class=1,
        image_size=image_size, channels=1, validation_split=0.0, test_split=0.01, shuffle_buffer=10_000, flip=augment,
        shift=2 if augment else 0,
    )  # fmt: skip
    storage = StorageConfig(uri=str(folder / "store"), retry_seconds=5)
    data = image_folder.describe(dataset, storage, seed)
    return image_folder.batches(dataset, data, storage, seed)


if __name__ == "__main__":
    main()
