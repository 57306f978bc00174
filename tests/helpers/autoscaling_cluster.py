"""A Ray cluster that starts empty and grows through Ray's real autoscaler, on this machine.

The head (no CPU, no GPU) runs Ray's autoscaler with its fake multi-node provider, which runs the autoscaler's
real logic and starts each node it adds as real Ray processes here (`ray._private.node.Node`, a raylet of the
node type's resources). Everything lives in a loopback-only network namespace of the test's own, under a
--temp-dir of its own, and is stopped by the PIDs started here (never `ray stop`, which kills every Ray on the
machine): the nodes the autoscaler added are processes of its monitor, below the head's `ray start`.

Ray 2.60's wheel lacks the defaults file of `provider.type: fake_multinode`, so the provider is named as an
`external` module. Autoscaler v1 works as it is. Autoscaler v2 adds a node only once it has matched the head's
Ray node to its head instance, which needs the head started with that instance's id (RAY_CLOUD_INSTANCE_ID, the
fake provider's head id) and node type (RAY_NODE_TYPE_NAME), as KubeRay starts its heads.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from helpers.netns_cluster import RAY, START_TIMEOUT_S, _ip, _kill_tree, namespaces_unavailable

GCS_ADDRESS = "127.0.0.1:6379"  # inside the cluster's own namespace
FAKE_HEAD_ID = "f" * 51 + "00000"  # the fake provider's id of the head (FAKE_HEAD_NODE_ID)
HEAD_TYPE = "ray.head.default"
# A node type like a g5.12xlarge (4 GPUs), as logical resources: at most one such node.
GPU4 = {"resources": {"CPU": 6, "GPU": 4}, "node_config": {}, "min_workers": 0, "max_workers": 1}
IDLE_TIMEOUT_MINUTES = 0.5  # an idle added node goes after this (cluster.yaml: 10); long enough to outlast a hand-over


def _config() -> dict:
    """The autoscaler's cluster config: the head type and one GPU node type, and every key its loader reads."""
    commands = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands")  # fmt: skip
    return {
        "cluster_name": "dltrain-test",
        "max_workers": 1,
        "upscaling_speed": 1,
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
        "provider": {
            "type": "external",
            "module": "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider",
            "gcs_address": GCS_ADDRESS,
            "use_node_id_as_ip": True,  # every fake node has the namespace's 127.0.0.1: tell them apart by id
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "auth": {"ssh_user": "ubuntu"},
        "head_node_type": HEAD_TYPE,
        "available_node_types": {
            HEAD_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "gpu4": GPU4,
        },
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        **{name: [] for name in commands},
    }


# Run in the namespace: what the autoscaler reports, read from the GCS as `ray status` reads it (no driver needed).
_STATUS = """
import json, sys
from ray._raylet import GcsClient
from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply
gcs = GcsClient(address=sys.argv[1])
nodes = [node for node in gcs.get_all_node_info().values() if node.state == 0]  # ALIVE
reply = GetClusterStatusReply()
reply.ParseFromString(gcs.get_cluster_status(timeout_s=10))
v1_status = json.loads(gcs.internal_kv_get(b"__autoscaling_status", None) or "{}")
v1 = v1_status.get("load_metrics_report", {})
state = reply.cluster_resource_state
demand = {
    "v1": [v1.get(name) for name in ("resource_demand", "pg_demand", "request_demand") if v1.get(name)],
    "v2": [f"{len(state.pending_gang_resource_requests)} placement groups"] * bool(state.pending_gang_resource_requests)
    + [f"{request.count} x {dict(request.request.resources_bundle)} requested"
       for constraint in state.cluster_resource_constraints for request in constraint.resource_requests]
    + [f"{task.count} x {dict(task.request.resources_bundle)} tasks" for task in state.pending_resource_requests],
}
reported = "autoscaler_report" in v1_status or reply.autoscaling_state.autoscaler_state_version > 0
gpus = sum(node.resources_total.get("GPU", 0) for node in nodes)
print(json.dumps({"gpus": gpus, "demand": demand, "reported": reported}))
"""


@dataclass
class AutoscalingCluster:
    """The head of a cluster whose autoscaler (`version` 1 or 2) adds `gpu4` nodes, in `namespace`."""

    namespace: str
    root: Path
    version: int
    token: str
    process: subprocess.Popen | None = None

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of the head and of a driver on it."""
        return {**(base or os.environ), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def in_namespace(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *command]

    def start(self) -> None:
        config = self.root / "autoscaler.yaml"
        config.write_text(json.dumps(_config()))  # JSON is YAML
        env = self.env({**os.environ, "RAY_FAKE_CLUSTER": "1", "RAY_enable_autoscaler_v2": str(int(self.version == 2))})
        if self.version == 2:
            env |= {"RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_ID, "RAY_NODE_TYPE_NAME": HEAD_TYPE}
        command = self.in_namespace(
            RAY, "start", "--head", "--block", "--port=6379", "--num-cpus=0", "--num-gpus=0",
            "--node-ip-address=127.0.0.1", f"--autoscaling-config={config}", f"--temp-dir={self.root / 'ray'}",
            "--include-dashboard=false", "--disable-usage-stats",
        )  # fmt: skip
        log = (self.root / "head.log").open("ab")
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        # As a cluster in use: its autoscaler has reported at least once.
        self.wait_for(lambda status: status["reported"], START_TIMEOUT_S, "the head's autoscaler to report")

    def status(self) -> dict | None:
        """Alive GPUs and the autoscaler's pending demands; None while the head does not answer."""
        probe = subprocess.run(
            self.in_namespace(sys.executable, "-c", _STATUS, GCS_ADDRESS),
            env=self.env(),
            capture_output=True,
            text=True,
        )
        return json.loads(probe.stdout.splitlines()[-1]) if probe.returncode == 0 and probe.stdout.strip() else None

    def demand(self) -> list:
        """What the autoscaler is asked for: pending tasks, placement groups and resource requests."""
        status = self.status()
        return status["demand"][f"v{self.version}"] if status else ["no answer"]

    def wait_for(self, condition, timeout: float, what: str) -> dict:
        """Return the first status that meets `condition`; fail with the head's logs after `timeout`."""
        deadline = time.monotonic() + timeout
        while (status := self.status()) is None or not condition(status):
            if time.monotonic() > deadline or self.process.poll() is not None:
                monitor = next(self.root.glob("ray/session_latest/logs/monitor.log"), None)
                logs = (monitor.read_text()[-3000:] if monitor else "") + (self.root / "head.log").read_text()[-2000:]
                raise RuntimeError(f"timed out after {timeout} s waiting for {what}; last status {status}:\n{logs}")
        # (each probe is a new GCS client process that takes a second or more: no sleep is needed between them)
        return status

    def stop(self) -> None:
        if self.process is not None:
            _kill_tree(self.process, grace_s=5)
            self.process = None


@contextlib.contextmanager
def autoscaling_cluster(version: int) -> Iterator[AutoscalingCluster]:
    """A started cluster whose autoscaler `version` adds nodes on demand; skips where namespaces cannot be made.
    Everything is stopped and removed on exit."""
    if reason := namespaces_unavailable():
        import pytest

        pytest.skip(f"autoscaling Ray test cluster: {reason}")
    namespace = f"dlta{os.getpid() % 250}v{version}"
    root = Path(tempfile.mkdtemp(prefix="dlta-"))  # short: Ray's unix sockets live below --temp-dir
    _ip("netns", "add", namespace)
    cluster = AutoscalingCluster(namespace, root, version, secrets.token_hex(16))
    try:
        _ip("-n", namespace, "link", "set", "lo", "up")
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "del", namespace)
        shutil.rmtree(root, ignore_errors=True)
