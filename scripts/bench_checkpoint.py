"""What checkpointing costs per epoch: `python -m dltrain` (one worker) writing its run folder to local storage
and to S3 (a real SeaweedFS server on 127.0.0.1, tests/helpers/s3server.py), alternately. Each epoch's
`checkpoint_seconds` (metrics.parquet: the history row, the model save, Ray's persistence of the checkpoint, the
TensorBoard and log uploads) as a share of the epoch's wall time (epoch start to next epoch start, from
scripts/timeline.py). Target: <= 5% of epoch time.

    python scripts/bench_checkpoint.py                                # 3 epochs of 16,384 images, local then S3
    python scripts/bench_checkpoint.py --limit 0 --epochs 5 --repetitions 2   # full epochs (54,000 images)

Prints one JSON line at the end.
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import benchmarking as bench

sys.path.insert(0, str(bench.REPO / "tests"))
from helpers.s3server import create_bucket, running_s3_server

# 16,384 images (115 steps of 128): a full epoch (421 steps) would be ~3.7x longer for the same checkpoint,
# so the default overstates the share; --limit 0 measures it against full epochs.
DEFAULT_LIMIT = 16384
DEFAULT_EPOCHS = 3
DEFAULT_REPETITIONS = 1
TARGET_SHARE = 0.05


def _run(args: argparse.Namespace, folder: Path, storage: list[str], env: dict, filesystem=None) -> dict:
    """One run's per-epoch checkpoint seconds and epoch seconds (epoch 1 excluded)."""
    timeline = folder / "timeline.json"
    command = bench.dltrain_command(
        f"dataset.path={args.data}", f"trainer.epochs={args.epochs}", f"dataset.limit={args.limit or 'null'}",
        *storage, bench.timeline_override(timeline),
    )  # fmt: skip
    completed = bench.run_command(command, env)
    uri = next(item.split("=", 1)[1] for item in storage if item.startswith("storage.uri="))
    folder_uri = bench.run_folder(completed.output, uri)
    rows = bench.read_run(folder_uri.removeprefix("s3://"), filesystem)["metrics"]
    checkpoint = bench.steady([row["checkpoint_seconds"] for row in rows])
    epoch = bench.steady_epoch_seconds(json.loads(timeline.read_text()))
    return {
        "checkpoint_seconds": bench.mean(checkpoint),
        "epoch_seconds": bench.mean(epoch),
        "share": bench.mean(checkpoint) / bench.mean(epoch),
        "first_epoch_checkpoint_seconds": rows[0]["checkpoint_seconds"],
    }


def _summary(runs: list[dict]) -> dict:
    share = statistics.median(run["share"] for run in runs)
    return {key: round(statistics.median(run[key] for run in runs), 4) for key in runs[0]} | {
        "met": share <= TARGET_SHARE,
        "runs": [{key: round(value, 4) for key, value in run.items()} for run in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=bench.DEFAULT_DATA, help="folder with the four .gz files")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs per run (>= 2)")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="first N training images; 0: all 60,000")
    parser.add_argument("--repetitions", type=int, default=DEFAULT_REPETITIONS, help="local/S3 pairs of runs")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON line to this file")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: epoch 1 is excluded from the steady state")

    load_before = bench.load_average()
    results: dict[str, list[dict]] = {"local": [], "s3": []}
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as tmp, running_s3_server() as server:
        bucket = create_bucket(server)
        s3_storage = ["storage=s3", f"storage.uri=s3://{bucket}/runs", f"storage.endpoint_url={server.endpoint_url}"]
        for repetition in range(args.repetitions):
            for name in results:
                folder = Path(tmp) / f"{name}-{repetition}"
                folder.mkdir()
                if name == "local":
                    result = _run(args, folder, [f"storage.uri={folder / 'runs'}"], bench.environment())
                else:
                    result = _run(args, folder, s3_storage, bench.environment(**server.env()), server.arrow_fs())
                results[name].append(result)
                print(f"{name} #{repetition + 1}: {json.dumps(result)}", flush=True)
    bench.emit(
        {
            "benchmark": "checkpoint",
            "epochs": args.epochs,
            "limit": args.limit or None,
            "local": _summary(results["local"]),
            "s3": _summary(results["s3"]),
            "target_share": TARGET_SHARE,
            "load_average_before": load_before,
        },
        args.output,
    )


if __name__ == "__main__":
    main()
