"""`dltrain serve` under load, beside the baseline a user would write (scripts/serve_baseline.py: one FastAPI
process, `model.predict` per request), on loopback, in one invocation.

A fixed number of `POST /v1/predict` requests, each one real Fashion-MNIST test image as a PNG, at each
concurrency (1, 8 and 32 client threads with keep-alive connections), the two servers alternating at every
concurrency: p50 and p99 latency and requests/s. Target at concurrency 32: dltrain serve >= 2x the baseline's
throughput with a p99 no worse. The client threads share the machine's cores with both servers.

    python scripts/bench_serve.py                     # trains a small model first (one epoch, 4,096 images)
    python scripts/bench_serve.py --storage DIR --model RUN_ID --requests 2000

Prints one JSON line at the end.
"""

import argparse
import concurrent.futures
import http.client
import io
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import benchmarking as bench

CONCURRENCY = (1, 8, 32)
DEFAULT_REQUESTS = 1000  # per server and concurrency: enough for a p99 from 10 slowest
TARGET_THROUGHPUT = 2.0  # dltrain serve's requests/s over the baseline's, at concurrency 32
READY_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _png(data: Path) -> bytes:
    from PIL import Image

    from dltrain.data.idx import read_idx

    image = read_idx(data / "t10k-images-idx3-ubyte.gz")[0]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def _multipart(png: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="item.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
    return body, f"multipart/form-data; boundary={boundary}"


def _load(port: int, body: bytes, content_type: str, requests: int, concurrency: int) -> dict:
    """`requests` POSTs from `concurrency` threads, each on its own keep-alive connection: latencies and rate."""
    latencies: list[float] = []
    lock = threading.Lock()

    def client(count: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine = []
        for _ in range(count):
            started = time.perf_counter()
            connection.request("POST", "/v1/predict", body, {"Content-Type": content_type})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"port {port} answered {response.status}")
            mine.append(time.perf_counter() - started)
        connection.close()
        with lock:
            latencies.extend(mine)

    shares = [requests // concurrency + (index < requests % concurrency) for index in range(concurrency)]
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client, share) for share in shares]:
            future.result()
    seconds = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests_per_second": round(requests / seconds, 1),
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
    }


def _start(command: list[str], port: int, body: bytes, content_type: str) -> subprocess.Popen:
    """Start a server and wait until it answers a request."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=bench.environment())
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[:3]} exited with {process.returncode}")
        try:
            _load(port, body, content_type, 1, 1)
            return process
        except (OSError, RuntimeError, http.client.HTTPException):
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"{command[:3]} did not answer within {READY_TIMEOUT_S} s")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


def _trained(data: Path, storage: Path) -> str:
    """A small run of the reference CNN (one epoch, 4,096 images): its id."""
    completed = subprocess.run(
        bench.dltrain_command(f"dataset.path={data}", f"storage.uri={storage}", "trainer.epochs=1",
                              "dataset.limit=4096", "trainer.progress=none"),
        capture_output=True, text=True, env=bench.environment(), check=True,
    )  # fmt: skip
    return bench.run_folder(completed.stdout, str(storage)).rsplit("/", 1)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=bench.DEFAULT_DATA, help="folder with the four .gz files")
    parser.add_argument("--storage", type=Path, help="the run store holding --model (default: train one)")
    parser.add_argument("--model", help="a COMPLETED run's id in --storage")
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS, help="per server and concurrency")
    parser.add_argument("--replicas", type=int, default=1, help="dltrain serve's replicas")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON line to this file")
    args = parser.parse_args()
    load_before = bench.load_average()
    body, content_type = _multipart(_png(args.data))
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        storage = args.storage or Path(tmp) / "runs"
        model = args.model or _trained(args.data, storage)
        ports = {"dltrain_serve": _free_port(), "baseline": _free_port()}
        commands = {
            "dltrain_serve": [str(Path(sys.executable).parent / "dltrain"), "serve", model, "--storage", str(storage),
                              "--port", str(ports["dltrain_serve"]), "--replicas", str(args.replicas)],
            "baseline": [sys.executable, str(bench.SCRIPTS / "serve_baseline.py"),
                         str(storage / model / "model" / "model.keras"), "--port", str(ports["baseline"])],
        }  # fmt: skip
        servers = {name: _start(command, ports[name], body, content_type) for name, command in commands.items()}
        results: dict[str, dict] = {name: {} for name in servers}
        try:
            for concurrency in CONCURRENCY:
                for name in servers:  # alternating: each concurrency sees both under the same conditions
                    _load(ports[name], body, content_type, min(args.requests, 50), concurrency)  # warm-up
                    results[name][str(concurrency)] = _load(ports[name], body, content_type, args.requests, concurrency)
                    print(f"{name} at {concurrency}: {results[name][str(concurrency)]}", flush=True)
        finally:
            for process in servers.values():
                _stop(process)
    at_32 = {name: results[name]["32"] for name in results}
    ratio = at_32["dltrain_serve"]["requests_per_second"] / at_32["baseline"]["requests_per_second"]
    bench.emit(
        {
            "benchmark": "serve",
            "requests": args.requests,
            "replicas": args.replicas,
            **results,
            "throughput_ratio_at_32": round(ratio, 2),
            "throughput_target": TARGET_THROUGHPUT,
            "throughput_met": ratio >= TARGET_THROUGHPUT,
            "p99_no_worse_at_32": at_32["dltrain_serve"]["p99_ms"] <= at_32["baseline"]["p99_ms"],
            "load_average_before": load_before,
        },
        args.output,
    )


if __name__ == "__main__":
    main()
