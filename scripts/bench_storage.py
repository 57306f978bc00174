"""What one epoch's run-folder writes cost on S3, timed alone (no training beside them): the history row
(`Run.record_epoch`, twice an epoch), the TensorBoard upload (train/ and validation/ events) and the log upload
(`Storage.upload`), against a real SeaweedFS server on 127.0.0.1 (tests/s3server.py). For comparison, the same
TensorBoard upload through Arrow's threaded `copy_files`, which `Storage.upload` used before. Ray's own checkpoint
upload is not in here: scripts/bench_checkpoint.py measures everything an epoch's end costs, with training.

    python scripts/bench_storage.py                                   # 20 epochs' worth, ~10 s
    python scripts/bench_storage.py --repetitions 100 --event-kib 300

Prints one JSON line at the end.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchmarking as bench
import pyarrow.fs as pafs

sys.path.insert(0, str(bench.REPO / "tests"))
from s3server import create_bucket, running_s3_server

from dltrain.runs import RunStore
from dltrain.storage import open_storage

DEFAULT_REPETITIONS = 20
# About what one epoch adds to each TensorBoard events file and to a worker's log.
DEFAULT_EVENT_KIB = 30


def _seconds(operation, repetitions: int) -> float:
    """Median seconds of `operation` over `repetitions` calls, after one warm-up call."""
    operation()
    times = []
    for _ in range(repetitions):
        started = time.perf_counter()
        operation()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=DEFAULT_REPETITIONS, help="calls timed per operation")
    parser.add_argument("--event-kib", type=int, default=DEFAULT_EVENT_KIB, help="size of each uploaded file")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON line to this file")
    args = parser.parse_args()

    load_before = bench.load_average()
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp, running_s3_server() as server:
        os.environ.update(server.env())
        storage = open_storage({"uri": f"s3://{create_bucket(server)}/runs", "endpoint_url": server.endpoint_url})
        run = RunStore(storage).create({}, {})
        stage = Path(tmp)
        for name in ("tensorboard/train/events", "tensorboard/validation/events", "logs/worker-0.log"):
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            (stage / name).write_bytes(os.urandom(args.event_kib * 1024))
        row = {"epoch": 1, "loss": 0.3, "accuracy": 0.9, "val_loss": 0.3, "val_accuracy": 0.9, "seconds": 12.0}
        seconds = {
            "history_row": _seconds(lambda: run.record_epoch(row), args.repetitions),
            "tensorboard_upload": _seconds(
                lambda: storage.upload(stage / "tensorboard", f"{run.path}/tensorboard"), args.repetitions
            ),
            "tensorboard_upload_threaded": _seconds(
                lambda: pafs.copy_files(
                    str(stage / "tensorboard"), f"{run.path}/tensorboard", destination_filesystem=storage.filesystem
                ),
                args.repetitions,
            ),
            "log_upload": _seconds(lambda: storage.upload(stage / "logs", f"{run.path}/logs"), args.repetitions),
        }
    per_epoch = 2 * seconds["history_row"] + seconds["tensorboard_upload"] + seconds["log_upload"]
    threaded_ratio = seconds["tensorboard_upload_threaded"] / seconds["tensorboard_upload"]
    bench.emit(
        {
            "benchmark": "storage",
            "seconds": {name: round(value, 4) for name, value in seconds.items()},
            "per_epoch_seconds": round(per_epoch, 4),
            "threaded_over_unthreaded": round(threaded_ratio, 1),
            "repetitions": args.repetitions,
            "event_kib": args.event_kib,
            "load_average_before": load_before,
        },
        args.output,
    )


if __name__ == "__main__":
    main()
