"""`dltrain serve RUN_ID|NAME@alias|NAME:N`: serve a model over HTTP with Ray Serve until Ctrl-C.

The API (see README.md, Serving): `POST /v1/predict` (image files, top-k labels), the Open Inference Protocol v2
(`/v2/health/live`, `/v2/health/ready`, `/v2/models/NAME`, `/v2/models/NAME/infer`), Seldon's v1
(`/api/v1.0/predictions`) and `GET /metadata`. The model comes from any storage; Ray is the embedded one on this
machine, or a cluster through --ray-address / $RAY_ADDRESS, where the replicas spread over the nodes.

It listens on loopback unless told otherwise, and then answers only requests for a loopback name (the Host header:
no web page reaches it by DNS rebinding). Another --host needs an API key (--api-key-env), or --allow-no-key.
"""

import argparse
import ipaddress
import logging
import os
import signal
import socket
import threading
from typing import Any

from dltrain.cli.options import add_storage_options, run_store
from dltrain.errors import DltrainError, one_line_errors
from dltrain.serving.source import locate


def register(commands: argparse._SubParsersAction) -> None:
    """Add `serve`."""
    command = commands.add_parser("serve", help="serve a model over HTTP (Ray Serve)", description=__doc__)
    command.add_argument("reference", metavar="MODEL", help="a run id, NAME:N or NAME@alias")
    command.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: loopback only)")
    command.add_argument("--port", type=int, default=8000, help="the port to listen on (default: 8000)")
    command.add_argument("--replicas", type=int, default=1, help="model replicas (default: 1)")
    command.add_argument("--api-key-env", metavar="VAR", help="require the key in this environment variable")
    command.add_argument("--allow-no-key", action="store_true", help="serve a --host other than loopback without an "
                         "API key: anyone who reaches it may use the model")  # fmt: skip
    command.add_argument("--ray-address", default=None, help="a Ray cluster (default: $RAY_ADDRESS, else embedded)")
    add_storage_options(command)
    command.set_defaults(handler=run)


def _check_port(host: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise DltrainError(f"--port {port}: expected 1 to 65535")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise DltrainError(f"cannot listen on {host}:{port}: {error.strerror}; choose another --port") from None


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")  # the Host names a server on a loopback address answers


def _allowed_hosts(host: str, key: str | None, allow_no_key: bool) -> tuple[str, ...] | None:
    """The Host names a server on `host` answers (None: any); DltrainError for a server other machines could reach
    without a key, unless `allow_no_key`."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost
        loopback = False
    if loopback:
        return tuple(dict.fromkeys((*LOOPBACK_NAMES, host)))
    if key is None and not allow_no_key:
        raise DltrainError(f"--host {host} without --api-key-env: anyone who reaches this machine could use the "
                           "model; give a key (--api-key-env VAR), or --allow-no-key to serve it openly")  # fmt: skip
    return None


def _api_key(variable: str | None) -> str | None:
    if variable is None:
        return None
    key = os.environ.get(variable)
    if not key:
        raise DltrainError(f"--api-key-env {variable}: that environment variable is not set (or empty)")
    return key


def run(args: argparse.Namespace) -> None:
    """Locate the model, start Ray Serve on --host:--port, and serve until Ctrl-C or SIGTERM."""
    if args.replicas < 1:
        raise DltrainError(f"--replicas {args.replicas}: expected at least 1")
    key = _api_key(args.api_key_env)
    allowed_hosts = _allowed_hosts(args.host, key, args.allow_no_key)
    _check_port(args.host, args.port)
    with one_line_errors():
        source = locate(run_store(args).storage, args.reference)
    # Ray Serve and TensorFlow load only once the command's input is good (and never for `dltrain --help`).
    from ray import serve

    from dltrain import cluster
    from dltrain.serving.app import ModelServer

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its start-up and access logs: not for the console
    with cluster.ray_connection(args.ray_address):
        serve.start(http_options={"host": args.host, "port": args.port})
        try:
            serve.run(ModelServer.options(num_replicas=args.replicas).bind(source, key, allowed_hosts), name="dltrain",
                      route_prefix="/")  # fmt: skip
            version = f" (version {source.version} of {source.name})" if source.version is not None else ""
            print(f"dltrain: serving run {source.run_id}{version} with {args.replicas} replica(s) at "
                  f"http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)  # fmt: skip
            _wait_for_interrupt()
        finally:
            serve.shutdown()
    print("dltrain: stopped serving", flush=True)


def _wait_for_interrupt() -> None:
    """Return on Ctrl-C or SIGTERM."""
    stopped = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        stopped.set()

    previous = signal.signal(signal.SIGTERM, stop), signal.signal(signal.SIGINT, stop)
    try:
        while not stopped.wait(timeout=1):
            pass
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
