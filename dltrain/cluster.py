"""The Ray cluster a run uses: the connection (an embedded local Ray or a cluster), whether its local paths are on
every node, and how long a run waits for its workers (capacity.py: whether it can hold them)."""

import contextlib
import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from dltrain import ray_private
from dltrain.capacity import describe_amounts, describe_demand
from dltrain.errors import DltrainError
from dltrain.job import Job
from dltrain.stage import temporary_name
from dltrain.storage import Storage

_RAY_ATTEMPT_S = 60  # Ray Train's own limit on one attempt to place a run's workers
# Ray Train's controller collects the workers' reports on this poll (Ray's default: 2 s), and only then does an
# epoch line reach the console: 0.5 s keeps it within a second of the epoch's end.
CONTROLLER_POLL_S = 0.5
NODE_CHECK_TIMEOUT_S = 60  # a node that has not answered the path check by then is named as not answering


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables in this block (processes started in it inherit them), then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Keep a Ray started in this block on 127.0.0.1.

    On Linux Ray gives its node the machine's external address even when told 127.0.0.1, and its servers
    listen on every interface. With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (Ray's switch for single-machine
    clusters) its node address and all its servers stay on loopback. Ray's Python side reads the switch when
    `ray` is imported, so the already-imported constant is set too.
    """
    with ray_private.single_machine_switch(), _environment(**{ray_private.SINGLE_MACHINE_VARIABLE: "0"}):
        yield


@contextlib.contextmanager
def _known_address() -> Iterator[None]:
    """Start a Ray in this block on a GCS port chosen here, and give its processes that address (RAY_ADDRESS).

    Ray's state API, which Ray Train V2 asks whether a stopped trial's controller is gone before it frees that
    trial's workers, finds its cluster through RAY_ADDRESS or by looking for GCS processes on the machine; with
    two Ray instances there (two dltrain commands) that look-up fails, and the workers would never be freed.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with _environment(**{ray_private.GCS_PORT_VARIABLE: str(port), "RAY_ADDRESS": f"127.0.0.1:{port}"}):
        yield


def trains_in_driver(job: Job) -> bool:
    """Whether a run trains in the driver's own process (Ray Train's local mode, `resources.local_mode`), with no
    Ray started: by default (auto) a run of one CPU worker, not a sweep's, when no cluster is given and this
    process is not already connected to a Ray (a notebook's `ray.init()`, a test's cluster)."""
    resources = job.resources
    if resources.local_mode != "auto":
        return resources.local_mode
    one_cpu_worker = resources.worker_range == (1, 1) and not resources.use_gpu
    cluster_given = job.ray.address or os.environ.get("RAY_ADDRESS") or ray.is_initialized()
    return one_cpu_worker and job.sweep is None and not cluster_given


@contextlib.contextmanager
def ray_connection(address: str | None, dashboard: bool = False) -> Iterator[bool]:
    """Use the Ray already initialised, else the given cluster ($RAY_ADDRESS), else an embedded local Ray; yields
    whether it started an embedded Ray (which no autoscaler grows).

    The embedded Ray listens and talks on 127.0.0.1 only, and is shut down on exit. Sweeps need its `dashboard`
    (on 127.0.0.1): Ray Train V2 asks its state API whether a stopped trial's controller is gone before it frees
    that trial's workers.
    """
    if ray.is_initialized():
        yield False
        return
    address = address or os.environ.get("RAY_ADDRESS")
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    with contextlib.ExitStack() as stack:
        if address:
            ray.init(address=address, **quiet)
        else:
            stack.enter_context(_loopback_only())
            # Ray's processes, and through the raylet every worker, take these from the environment when ray.init
            # starts them; the driver's own environment is restored at once, so that programs it starts later
            # (another dltrain command) do not join this Ray. Ray runs workers at nice 15, so on a busy machine
            # the training worker would lose the cores to anything else (scripts/bench_overhead.py: 80 s -> 32 s
            # per epoch at nice 0). One machine has no preemptible nodes: Ray Train's preemption watcher would only
            # be one more process polling in the background.
            with _known_address(), _environment(RAY_worker_niceness="0", RAY_TRAIN_ENABLE_PREEMPTION_WATCHER="0"):
                # address="local" always starts a new Ray: a stale /tmp/ray/ray_current_cluster cannot make it hang.
                # Its session folder (logs, sockets, spilled objects) goes with it: the run folder keeps the logs.
                # (Where Ray would make /tmp/ray: its socket paths must stay short.)
                ray_temp = stack.enter_context(
                    tempfile.TemporaryDirectory(
                        prefix=temporary_name("ray"), dir=ray_private.system_temp_dir(), ignore_cleanup_errors=True
                    )
                )
                ray.init(address="local", include_dashboard=dashboard, _temp_dir=ray_temp, **quiet)
        try:
            yield not address
        finally:
            ray.shutdown()


@contextlib.contextmanager
def controller_settings(wait_s: float) -> Iterator[None]:
    """Ray Train started in this block polls its workers every CONTROLLER_POLL_S, and gives up an attempt to
    place a run's workers after a quarter of `wait_s` (at most its default 60 s, at least 30 s), then decides
    again; WaitForWorkers ends the run once `wait_s` have passed.

    Several attempts fit in the wait, so that an elastic run whose first attempt still counted a lost node
    (Ray marks a node dead only after missed heartbeats) goes on with the workers left at the next one. Ray
    Train's controller takes these settings from the driver's environment.
    """
    # At least 30 s (or the whole wait, if shorter): starting a worker group on a busy machine takes that long.
    attempt_s = max(min(_RAY_ATTEMPT_S, wait_s / 4), min(30, wait_s))
    settings = {
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": f"{attempt_s:g}",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": f"{CONTROLLER_POLL_S:g}",
    }
    with _environment(**settings):
        yield


@ray.remote(num_cpus=0)
def _missing(paths: list[str]) -> list[str]:
    return [path for path in paths if not os.path.exists(path)]


def check_paths_on_nodes(dataset_path: str | None, storage: Storage) -> None:
    """A local `dataset_path` and a local storage must be the same folders on every node of the cluster, as
    on a shared file system; DltrainError naming the nodes that lack one. S3 needs no check.

    The storage check looks for a file this driver has just written there, so a folder of the same name that
    is not the same folder fails too. Nothing runs on an embedded Ray, which is this machine alone.
    """
    own_node = ray.get_runtime_context().get_node_id()
    others = [node for node in ray.nodes() if node["Alive"] and node["NodeID"] != own_node]
    named = {dataset_path: f"dataset.path={dataset_path}"} if dataset_path and "://" not in dataset_path else {}
    marker = Path(storage.root) / f".dltrain-node-check-{uuid.uuid4().hex}"
    local_storage = "://" not in storage.uri
    if local_storage:
        named[str(marker)] = f"storage.uri={storage.uri}"
    if not others or not named:
        return
    if local_storage:
        marker.touch()
    try:
        checks = {
            node["NodeManagerAddress"]: _missing.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote(list(named))
            for node in others
        }
        ready, _ = ray.wait(list(checks.values()), num_returns=len(checks), timeout=NODE_CHECK_TIMEOUT_S)
        lacking: dict[str, list[str]] = {}
        for address, check in checks.items():
            if check not in ready:
                raise DltrainError(f"node {address} did not answer the check of {', '.join(named.values())} "
                                   f"within {NODE_CHECK_TIMEOUT_S} s")  # fmt: skip
            for path in ray.get(check):
                lacking.setdefault(named[path], []).append(address)
    finally:
        marker.unlink(missing_ok=True)
    if lacking:
        raise DltrainError(
            "; ".join(f"{what} is not on every node (missing on {', '.join(sorted(nodes))})" for what, nodes in
                      lacking.items())
            + ": a Ray cluster of several nodes needs s3:// paths, or folders that every node shares"
        )  # fmt: skip


class WorkersUnavailable(RuntimeError):
    """A run's workers could not be placed for ray.wait_for_workers_s: one line saying what was lost, needed
    and left."""


class WaitForWorkers(ray_private.ControllerCallback):
    """In Ray Train's controller: fail the run once its workers have not been running for `seconds`.

    Without this, a run whose node was lost waits forever for capacity that is not coming (Ray Train retries
    placing its workers without end), and an elastic run below its minimum never starts again. The controller
    updates its state on every loop, so this sees each one.
    """

    def __init__(self, seconds: float, run_id: str, workers: int, per_worker: dict[str, float]):
        self.seconds, self.run_id, self.workers, self.per_worker = seconds, run_id, workers, per_worker
        self.nodes = {node["NodeID"]: node for node in ray.nodes() if node["Alive"]}  # as the run starts
        self.waiting_since: float | None = None

    def after_controller_state_update(self, previous_state, current_state) -> None:
        if ray_private.workers_running(current_state) or current_state.is_terminal():
            self.waiting_since = None
            return
        now = time.monotonic()
        self.waiting_since = self.waiting_since or now
        if now - self.waiting_since > self.seconds:
            raise WorkersUnavailable(self._message())

    def _message(self) -> str:
        alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        lost = [node for node_id, node in self.nodes.items() if node_id not in alive]
        left = ray.cluster_resources()
        parts = [
            f"lost node {', '.join(node['NodeManagerAddress'] for node in lost)}" if lost else None,
            f"{describe_demand(self.workers, self.per_worker)} could not be placed for {self.seconds:g} s "
            "(ray.wait_for_workers_s)",
            f"the cluster has {describe_amounts({name: left.get(name, 0) for name in self.per_worker})} left",
            f"resume={self.run_id} continues it once the capacity is back",
        ]
        return "; ".join(part for part in parts if part)
