"""The Ray internals dltrain uses, in one place: what the cluster's autoscaler reports, Ray Train's controller
(its callbacks, states and abort), and the switches and paths of an embedded Ray.

Ray 2.60 has no public API for these: `ray status` itself reads autoscaler v1's report from the GCS's key-value
store and v2's state through a GCS RPC. Only the `ray==2.60.0` pin holds these names; tests/test_ray_private.py
fails loudly if an upgrade moves them.
"""

import contextlib
import json
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import ray
from ray._common.utils import get_default_system_temp_dir
from ray._private import ray_constants
from ray._raylet import GcsClient
from ray.actor import ActorHandle
from ray.autoscaler.v2.utils import is_autoscaler_v2
from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply
from ray.experimental.internal_kv import _internal_kv_get
from ray.train.v2._internal.execution.callback import ControllerCallback as ControllerCallback  # re-exported
from ray.train.v2._internal.execution.controller.state import RunningState
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

GCS_PORT_VARIABLE = ray_constants.GCS_PORT_ENVIRONMENT_VARIABLE  # the port a Ray started here gives its GCS
# Ray's switch for a single-machine cluster, whose node address and servers stay on 127.0.0.1 ("0").
SINGLE_MACHINE_VARIABLE = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR


def system_temp_dir() -> str:
    """The folder Ray puts its session folders under (/tmp on Linux, whatever TMPDIR says)."""
    return get_default_system_temp_dir()


@contextlib.contextmanager
def single_machine_switch() -> Iterator[None]:
    """In this block, the switch SINGLE_MACHINE_VARIABLE says as Ray's Python read it at import: off.

    Ray reads the variable once, when `ray` is imported; a Ray started later in this process would not see it.
    """
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def workers_running(state: object) -> bool:
    """Whether a state of Ray Train's controller (a ControllerCallback sees each one) has its workers running."""
    return isinstance(state, RunningState)


def train_controller(thread: threading.Thread) -> ActorHandle | None:
    """The Ray Train controller that `thread`, in a Ray trainer's fit(), waits on; None before it has one.

    Its `abort` ends the run as Ray Train's own Ctrl-C does: the workers stop and the controller's callbacks run,
    Ray Train's withdrawal of its standing resource request among them (a controller that dies with its driver
    leaves that request to the cluster for 3 minutes, and an elastic run on it counts those workers as taken).
    Ray Train aborts only from a SIGINT handler that it installs when fit() runs in the main thread, and keeps the
    controller in a local variable of `_initialize_and_run_controller`.
    """
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code is DataParallelTrainer._initialize_and_run_controller.__code__:
            return frame.f_locals.get("controller")
        frame = frame.f_back
    return None


Bundle = tuple[tuple[str, float], ...]  # a resource bundle, hashable: (("CPU", 1.0), ("GPU", 1.0))


def bundle(resources: dict[str, float]) -> Bundle:
    """`resources` as a Bundle (names sorted, zero amounts left out, amounts rounded as Ray rounds them)."""
    return tuple(sorted((name, round(float(amount), 4)) for name, amount in resources.items() if amount))


@dataclass(frozen=True)
class AutoscalerReport:
    """What the cluster's autoscaler said in its latest update.

    `pending` holds the gang demands (placement groups) waiting in the cluster's state of version `state`, each as a
    Counter of bundles. `update` names the autoscaler's latest update by the state it read (so an update answers a
    demand posted after state S once update > S); `adding` the nodes it is adding by node type; `infeasible`
    the gang demands it says no node type can ever hold (autoscaler v2), or None where it does not say (v1).

    v1 reports its demands with its update (`state` is `update`, its time). v2's GCS lists demands the autoscaler
    has not read yet, and its update (the instance manager's version) can change without a read: its versions are
    those of the GCS's cluster state, one per read, the autoscaler's included.
    """

    version: int
    update: float
    state: float
    pending: tuple[Counter, ...]
    adding: dict[str, int]
    infeasible: tuple[Counter, ...] | None


def _v1_status() -> dict | None:
    status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    return json.loads(status) if status else None


def autoscaler_reported() -> bool:
    """Whether the cluster's autoscaler (its monitor, which every Ray head runs) has reported since it started."""
    if is_autoscaler_v2(fetch_from_server=True):
        return _v2_status().autoscaling_state.autoscaler_state_version > 0
    return "autoscaler_report" in (_v1_status() or {})


def autoscaler_report() -> AutoscalerReport | None:
    """The latest report of an autoscaler that can add nodes to the connected cluster; None where it has none (a
    `ray start` cluster without `--autoscaling-config`), or has not reported yet (`autoscaler_reported`).

    Autoscaler v2 says what is infeasible, so a read-only one (which adds nothing) answers for itself; a v1
    autoscaler on a read-only provider names every node type after its node (`node_<id>`).
    """
    if is_autoscaler_v2(fetch_from_server=True):
        return _v2_report()
    status = _v1_status() or {}
    report = status.get("autoscaler_report")
    if not report or all(kind == f"node_{node}" for node, kind in (report.get("node_type_mapping") or {}).items()):
        return None
    demands = status["load_metrics_report"].get("pg_demand") or []
    pending = tuple(
        Counter({bundle(resources): count for resources, count in shape["bundles"]}) for shape, _ in demands
    )
    adding = Counter(report.get("pending_launches") or {})
    adding.update(kind for *_, kind, _status in report.get("pending_nodes") or [])
    return AutoscalerReport(1, status["time"], status["time"], pending, dict(adding), None)


def _v2_status() -> GetClusterStatusReply:
    reply = GetClusterStatusReply()
    reply.ParseFromString(GcsClient(address=ray.get_runtime_context().gcs_address).get_cluster_status(timeout_s=10))
    return reply


def _gang(request) -> Counter:
    return Counter(bundle(dict(part.resources_bundle)) for part in request.requests)


def _v2_report() -> AutoscalerReport:
    reply = _v2_status()
    autoscaling, cluster = reply.autoscaling_state, reply.cluster_resource_state
    adding = Counter()
    for request in autoscaling.pending_instance_requests:
        adding[request.ray_node_type_name or request.instance_type_name] += request.count
    adding.update(
        instance.ray_node_type_name or instance.instance_type_name for instance in autoscaling.pending_instances
    )
    return AutoscalerReport(
        2,
        autoscaling.last_seen_cluster_resource_state_version,
        cluster.cluster_resource_state_version,
        tuple(_gang(request) for request in cluster.pending_gang_resource_requests),
        dict(adding),
        tuple(_gang(request) for request in autoscaling.infeasible_gang_resource_requests),
    )
