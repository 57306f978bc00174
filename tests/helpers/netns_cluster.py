"""A real multi-node Ray cluster on this machine: one network namespace per node, joined by a bridge.

The test's own bridge on the host holds the subnet's .1 address (where the test's S3 server listens); the head
is .2 and the worker nodes .3, .4, ... Each node is one `ray start --block` inside its namespace, with its own
--temp-dir and token authentication (RAY_AUTH_MODE=token and a token made here). A worker node can be given a
private folder: an empty tmpfs over a host folder, in that node's own mount namespace, so that a path on the
host is missing there as on another machine.

Nodes are stopped by the PIDs started here (never `ray stop`, which kills every Ray on the machine), and the
namespaces, links and temp dirs are removed, even when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).parent / "ray")
START_TIMEOUT_S = 180
GCS_PORT = 6379
DASHBOARD_PORT = 8265
# The head's GCS marks a node dead after it missed this many 1 s health checks (Ray's default: 5 of 3 s, with a
# 10 s timeout each): a lost node shows in seconds, and a node busy on 2 shared cores is still not lost.
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "3000",
                   "RAY_health_check_failure_threshold": "5"}  # fmt: skip


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _descendants(pid: int) -> list[int]:
    """`pid`'s child processes, their children, and so on (from /proc, as psutil is not a test dependency)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM `process` and every process below it, then SIGKILL whatever is left after `grace_s`."""
    pids = [process.pid, *_descendants(process.pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL) if grace_s else (signal.SIGKILL,):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.2)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


@dataclass
class Node:
    """One Ray node in its own network namespace."""

    name: str
    namespace: str
    address: str
    start_args: list[str]
    temp_dir: Path
    private_folder: Path | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    def command(self) -> list[str]:
        ray_start = [RAY, "start", "--block", f"--node-ip-address={self.address}", f"--temp-dir={self.temp_dir}",
                     "--disable-usage-stats", *self.start_args]  # fmt: skip
        if self.private_folder is None:
            return ["ip", "netns", "exec", self.namespace, *ray_start]
        # Its own mount namespace, where the private folder is an empty tmpfs: `exec` keeps ray start's PID.
        script = f'mount -t tmpfs dltrain-test "{self.private_folder}" && exec "$@"'
        return ["ip", "netns", "exec", self.namespace, "unshare", "--mount", "--propagation", "private",
                "sh", "-c", script, "sh", *ray_start]  # fmt: skip

    def start(self, env: dict[str, str]) -> None:
        log = (self.temp_dir.parent / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(self.command(), env=env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """Lose this node at once: SIGKILL its raylet, its workers and every other process of it."""
        if self.process is not None:
            _kill_tree(self.process, grace_s=0)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            _kill_tree(self.process, grace_s=3)
            self.process = None


@dataclass
class NamespaceCluster:
    """A head (no CPU, no GPU: it runs drivers, Ray Train's controllers and the job server) and worker nodes."""

    prefix: str
    subnet: str
    root: Path
    nodes: list[Node] = field(default_factory=list)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    node_env: dict[str, str] = field(default_factory=dict)

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def host_address(self) -> str:
        """The host's own address on the test bridge."""
        return f"{self.subnet}.1"

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def workers(self) -> list[Node]:
        return self.nodes[1:]

    @property
    def gcs_address(self) -> str:
        return f"{self.head.address}:{GCS_PORT}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.head.address}:{DASHBOARD_PORT}"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a node, a driver or a `ray job` client of this cluster."""
        return {**(base or os.environ), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def in_head(self, *command: str) -> list[str]:
        """`command` run in the head's namespace, as on the head machine."""
        return ["ip", "netns", "exec", self.head.namespace, *command]

    def add_namespace(self, name: str, index: int) -> tuple[str, str]:
        namespace, host_end, node_end = f"{self.prefix}{name}", f"{self.prefix}{name}h", f"{self.prefix}{name}n"
        _ip("netns", "add", namespace)
        _ip("link", "add", host_end, "type", "veth", "peer", "name", node_end)
        _ip("link", "set", host_end, "master", self.bridge, "up")
        _ip("link", "set", node_end, "netns", namespace)
        address = f"{self.subnet}.{index}"
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", node_end)
        _ip("-n", namespace, "link", "set", node_end, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        return namespace, address

    def build_network(self, workers: int) -> None:
        """The bridge and one namespace per node, each with its address: the head .2, worker nodes .3, .4, ..."""
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index, name in enumerate(["head", *(f"w{i}" for i in range(1, workers + 1))]):
            namespace, address = self.add_namespace(name, index + 2)
            self.nodes.append(Node(name, namespace, address, [], self.root / f"ray-{name}"))

    def start(self, worker_args: list[str], private_folder: Path, env: dict[str, str]) -> None:
        """Start Ray on every node, each with `env` (as a machine's credentials); worker nodes take
        `worker_args` (their resources), and the last one does not see `private_folder`'s contents."""
        self.node_env = self.env({**os.environ, **env})
        self.head.start_args = ["--head", f"--port={GCS_PORT}", "--num-cpus=0", "--num-gpus=0",
                                "--include-dashboard=true", f"--dashboard-host={self.head.address}",
                                f"--dashboard-port={DASHBOARD_PORT}"]  # fmt: skip
        for node in self.workers:
            node.start_args = [f"--address={self.gcs_address}", *worker_args]
        self.workers[-1].private_folder = private_folder
        self.head.start({**self.node_env, **FAST_NODE_DEATH})
        self.wait_for_nodes(1)
        for node in self.workers:
            node.start(self.node_env)
        self.wait_for_nodes(len(self.nodes))

    def alive_nodes(self) -> int | None:
        """How many nodes the head counts as alive, asked from the head's namespace; None if it cannot answer."""
        probe = "import ray; ray.init(logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
        env = self.env({**os.environ, "RAY_ADDRESS": self.gcs_address})
        result = subprocess.run(self.in_head(sys.executable, "-c", probe), env=env, capture_output=True, text=True)
        return int(result.stdout.split()[-1]) if result.returncode == 0 and result.stdout.split() else None

    def wait_for_nodes(self, count: int, timeout: float = START_TIMEOUT_S) -> None:
        """Return once the head counts `count` alive nodes; fail with the nodes' logs after `timeout`."""
        deadline = time.monotonic() + timeout
        while (alive := self.alive_nodes()) != count:
            if time.monotonic() > deadline or any(n.process and n.process.poll() is not None for n in self.nodes):
                logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in self.root.glob("*.log"))
                raise RuntimeError(f"{alive} of {count} Ray nodes came up in {timeout} s:\n{logs}")
        # (each probe is a new Ray client that takes seconds: no sleep is needed between them)

    def restart(self, node: Node) -> None:
        """Bring a lost node back, as a replaced machine joins again."""
        node.start(self.node_env)
        self.wait_for_nodes(len(self.nodes))

    def teardown(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        for node in self.nodes:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", node.namespace)  # removes the node's end of its veth pair, and so the pair
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", self.bridge)
        shutil.rmtree(self.root, ignore_errors=True)


def namespaces_unavailable() -> str | None:
    """Why this machine cannot build the test cluster, or None if it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "the `ip` (iproute2) and `unshare` (util-linux) commands are needed"
    probe = f"dltprobe{os.getpid() % 10000}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except subprocess.CalledProcessError as error:
        return f"cannot create a network namespace: {error.stderr.strip()}"
    return None


@contextlib.contextmanager
def namespace_cluster(workers: int) -> Iterator[NamespaceCluster]:
    """The network of a head and `workers` worker nodes, ready for `start()`; skips where namespaces cannot be
    made. Everything is torn down on exit."""
    if reason := namespaces_unavailable():
        pytest.skip(f"multi-node Ray test cluster: {reason}")
    # Names and subnet of this process's own: another test session on the machine builds its own. A short
    # root: Ray's unix sockets live below each node's --temp-dir (sun_path is limited to 107 bytes).
    tag = os.getpid() % 250
    root = Path(tempfile.mkdtemp(prefix="dltc-"))
    cluster = NamespaceCluster(prefix=f"dlt{tag}", subnet=f"10.213.{tag}", root=root)
    try:
        cluster.build_network(workers)
        yield cluster
    finally:
        cluster.teardown()
