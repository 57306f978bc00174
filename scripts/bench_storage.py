"""What one epoch's run-folder writes cost on S3, timed alone (no training beside them): the history row
(`Run.record_epoch`, twice an epoch), the TensorBoard upload (train/ and validation/ events), the log upload
(`Storage.upload`) and a checkpoint upload as Ray makes it (Arrow's `copy_files` of a model file and state.json,
threaded unless the filesystem is an S3FileSystem), against a real SeaweedFS server on 127.0.0.1
(tests/helpers/s3server.py). For comparison, the same TensorBoard upload through Arrow's threaded `copy_files`, which
`Storage.upload` used before.

Each operation is timed on dltrain's retrying filesystem (dltrain/retrying_fs.py) and on the bare pyarrow
S3FileSystem it wraps, as configured before it (background writes on), one call of each after the other, so the
ratio compares them under the same load. Ray's checkpoint persistence with training around it is in
scripts/bench_checkpoint.py.

    python scripts/bench_storage.py                                   # 20 epochs' worth, ~20 s
    python scripts/bench_storage.py --repetitions 100 --event-kib 300

Prints one JSON line at the end.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import benchmarking as bench
import pyarrow.fs as pafs

sys.path.insert(0, str(bench.REPO / "tests"))
from dltrain.job import StorageConfig
from dltrain.runs import RunStore
from dltrain.storage import Storage, open_storage

from helpers.s3server import create_bucket, running_s3_server

DEFAULT_REPETITIONS = 20
# About what one epoch adds to each TensorBoard events file and to a worker's log.
DEFAULT_EVENT_KIB = 30
CHECKPOINT_KIB = 1300  # the reference CNN's model.keras with its optimizer state


def _alternating(operations: dict[str, Callable[[], object]], repetitions: int) -> dict[str, float]:
    """Median seconds of each operation over `repetitions` rounds that call each once, after one warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in operations}
    for round_number in range(repetitions + 1):
        for name, operation in operations.items():
            started = time.perf_counter()
            operation()
            if round_number:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def _operations(storage: Storage, stage: Path) -> dict[str, Callable[[], object]]:
    """One epoch's writes on `storage`, each a call."""
    run = RunStore(storage).create({}, {})
    row = {"epoch": 1, "loss": 0.3, "accuracy": 0.9, "val_loss": 0.3, "val_accuracy": 0.9, "seconds": 12.0}
    # As ray/train/v2/_internal/execution/storage.py copies a checkpoint folder.
    threads = not isinstance(storage.filesystem, pafs.S3FileSystem)
    return {
        "history_row": lambda: run.record_epoch(row),
        "tensorboard_upload": lambda: storage.upload(stage / "tensorboard", f"{run.path}/tensorboard"),
        "tensorboard_upload_threaded": lambda: pafs.copy_files(
            str(stage / "tensorboard"), f"{run.path}/tensorboard", destination_filesystem=storage.filesystem
        ),
        "log_upload": lambda: storage.upload(stage / "logs", f"{run.path}/logs"),
        "checkpoint_upload": lambda: pafs.copy_files(
            str(stage / "checkpoint"),
            f"{run.path}/checkpoints/epoch-0001",
            destination_filesystem=storage.filesystem,
            use_threads=threads,
            chunk_size=64 * 1024 * 1024,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=DEFAULT_REPETITIONS, help="calls timed per operation")
    parser.add_argument("--event-kib", type=int, default=DEFAULT_EVENT_KIB, help="size of each uploaded file")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON line to this file")
    args = parser.parse_args()

    load_before = bench.load_average()
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp, running_s3_server() as server:
        os.environ.update(server.env())
        bucket = create_bucket(server)
        retrying = open_storage(StorageConfig(uri=f"s3://{bucket}/runs", endpoint_url=server.endpoint_url))
        bare_filesystem = pafs.S3FileSystem(
            endpoint_override=server.host_port, scheme="http", region=server.region,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=10),
        )  # fmt: skip
        bare = Storage(bare_filesystem, retrying.root + "-bare", retrying.uri + "-bare")
        stage = Path(tmp)
        sizes = {
            "tensorboard/train/events": args.event_kib,
            "tensorboard/validation/events": args.event_kib,
            "logs/worker-0.log": args.event_kib,
            "checkpoint/model.keras": CHECKPOINT_KIB,
            "checkpoint/state.json": 1,
        }
        for name, kib in sizes.items():
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            (stage / name).write_bytes(os.urandom(kib * 1024))
        operations = {
            **{f"retrying/{name}": call for name, call in _operations(retrying, stage).items()},
            **{f"bare/{name}": call for name, call in _operations(bare, stage).items()},
        }
        timed = _alternating(operations, args.repetitions)
    seconds = {name.removeprefix("retrying/"): value for name, value in timed.items() if name.startswith("retrying/")}
    baseline = {name.removeprefix("bare/"): value for name, value in timed.items() if name.startswith("bare/")}
    per_epoch = 2 * seconds["history_row"] + seconds["tensorboard_upload"] + seconds["log_upload"]
    bare_per_epoch = 2 * baseline["history_row"] + baseline["tensorboard_upload"] + baseline["log_upload"]
    bench.emit(
        {
            "benchmark": "storage",
            "seconds": {name: round(value, 4) for name, value in seconds.items()},
            "bare_s3_seconds": {name: round(value, 4) for name, value in baseline.items()},
            "retrying_over_bare": {name: round(seconds[name] / baseline[name], 2) for name in seconds},
            "per_epoch_seconds": round(per_epoch, 4),
            "bare_per_epoch_seconds": round(bare_per_epoch, 4),
            "threaded_over_unthreaded": round(
                seconds["tensorboard_upload_threaded"] / seconds["tensorboard_upload"], 1
            ),
            "repetitions": args.repetitions,
            "event_kib": args.event_kib,
            "load_average_before": load_before,
        },
        args.output,
    )


if __name__ == "__main__":
    main()
