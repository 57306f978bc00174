"""Whether the connected Ray can hold a run's workers: the resources each worker takes, and, on a cluster whose
autoscaler adds nodes on demand, a wait for them before Ray Train starts the workers.

Without an autoscaler, a run the cluster's nodes can never hold fails in one line, at once. With one, the run asks
for its workers with a placement group of the bundles Ray Train will ask for: the autoscaler sees it as pending
demand (v1 and v2 alike) and adds nodes. The group is removed once placed, or when the wait ends; Ray Train then
places its own (and withdraws its own resource request when the run ends), so nothing keeps the nodes busy and
the autoscaler can remove them when idle.
"""

import math
import time
from collections import Counter

import ray
from ray.util.placement_group import placement_group, remove_placement_group

from dltrain import ray_private
from dltrain.errors import DltrainError
from dltrain.job import ResourcesConfig

TRIAL_CPUS = 0.01  # what a sweep's trial (which only starts its workers) reserves; Tune refuses 0
# How often the wait looks at the placement group and the autoscaler's report: often enough to see what the
# autoscaler adds before a node that starts in seconds (as in the tests) is up.
_POLL_S = 0.25
# Autoscaler v1 does not say what is infeasible: after this many of its updates that saw the demand waiting and
# added no node, while the nodes up cannot hold it, it adds none for it (no node type, within its limits, can).
_SILENT_UPDATES = 2
_UPDATE_S = 6  # autoscalers update, and report, every 5 s: an update and a margin
_FIRST_REPORT_S = 15  # a new cluster's autoscaler reports within its first updates
_ANNOUNCE_S = 15  # the waiting line comes with the autoscaler's first answer, or after this long without one


def _nodes() -> list[dict[str, float]]:
    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def _slots(nodes: list[dict[str, float]], per_worker: dict[str, float]) -> float:
    """How many workers of `per_worker` these nodes' resources can hold (without limit if they need nothing)."""
    needed = {name: amount for name, amount in per_worker.items() if amount > 0}
    if not needed:
        return math.inf
    return sum(min(math.floor(node.get(name, 0) / amount + 1e-9) for name, amount in needed.items()) for node in nodes)


def autoscaled(embedded: bool) -> bool:
    """Whether the connected cluster has an autoscaler that can add nodes; not an `embedded` Ray. A cluster that has
    just started is given up to _FIRST_REPORT_S for its autoscaler's first report."""
    if embedded:
        return False
    deadline = time.monotonic() + _FIRST_REPORT_S
    while not ray_private.autoscaler_reported() and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    return ray_private.autoscaler_report() is not None


def worker_resources(
    resources: ResourcesConfig, autoscaling: bool, trials_at_once: int | None = None
) -> dict[str, float]:
    """Ray resources for one worker of a run, or of one of a sweep's `trials_at_once` trials sharing the cluster.

    With resources.cpus_per_worker null, CPU workers share the CPUs of the nodes up (Ray caps each worker's threads
    at its CPUs) and GPU workers take one CPU each, less when there are fewer; trials share equally, each keeping
    TRIAL_CPUS for itself. On an `autoscaling` cluster, whose nodes come with the runs, every worker takes 1 CPU.
    """
    workers, use_gpu = resources.num_workers, resources.use_gpu
    if resources.cpus_per_worker:
        cpus = resources.cpus_per_worker
    elif autoscaling:
        cpus = 1.0
    else:
        total_cpus = sum(node.get("CPU", 0) for node in _nodes())
        run_cpus = total_cpus if trials_at_once is None else total_cpus / trials_at_once - TRIAL_CPUS
        share = math.floor(run_cpus / workers * 100) / 100  # Ray rounds resources to 1/10,000: stay below the total
        cpus = min(1.0, share) if use_gpu else share
    return {"CPU": cpus, **({"GPU": 1} if use_gpu else {})}


def describe_amounts(amounts: dict[str, float]) -> str:
    """`{"GPU": 2, "CPU": 1}` as "2 GPU, 1 CPU"."""
    return ", ".join(f"{amount:g} {name}" for name, amount in amounts.items())


def describe_demand(workers: int, per_worker: dict[str, float]) -> str:
    """ "4 workers x {GPU: 1, CPU: 0.5}"."""
    return f"{workers} workers x {{{', '.join(f'{name}: {amount:g}' for name, amount in per_worker.items())}}}"


def _has(per_worker: dict[str, float]) -> str:
    """What the nodes up have of the resources a worker takes: "0 CPU, 0 GPU"."""
    nodes = _nodes()
    return describe_amounts({name: sum(node.get(name, 0) for node in nodes) for name in per_worker})


def ensure_capacity(resources: ResourcesConfig, per_worker: dict[str, float], wait_s: float, autoscaling: bool) -> None:
    """Return once the cluster's nodes can hold a run's workers (an elastic run's min_workers) of `per_worker`;
    DltrainError in one line where they never will: at once without an autoscaler, when the autoscaler finds the
    demand infeasible, or after `wait_s` (ray.wait_for_workers_s)."""
    workers = resources.worker_range[0]
    if _slots(_nodes(), per_worker) >= workers:
        return
    if not autoscaling:
        gpu_hint = "use resources=cpu or resources.use_gpu=false"
        hint = gpu_hint if resources.use_gpu else "lower resources.cpus_per_worker"
        raise DltrainError(
            f"resources need {describe_demand(workers, per_worker)}; this Ray cluster has {_has(per_worker)} and "
            f"cannot scale: {hint}, or add nodes"
        )
    _wait_for_autoscaler(workers, per_worker, wait_s)


def _wait_for_autoscaler(workers: int, per_worker: dict[str, float], wait_s: float) -> None:
    """Ask the autoscaler for the workers' nodes with a placement group of their bundles, and wait for it.

    The waiting line says what the cluster had when the wait began, and which nodes the autoscaler is adding once
    it says (or after _ANNOUNCE_S without an answer, or at the end if the nodes came first)."""
    demand, started, before = describe_demand(workers, per_worker), time.monotonic(), _has(per_worker)
    ours = Counter({ray_private.bundle(per_worker): workers})
    # The cluster's state just before the demand is posted: only the autoscaler's updates that read a later one
    # (where Ray lists the demand at once) answer it. Where there is no report yet, the first that lists it.
    posted = report.state if (report := ray_private.autoscaler_report()) is not None else None
    group = placement_group([per_worker] * workers, strategy="PACK")  # as Ray Train places a run's workers
    coming: dict[str, int] = {}
    last_answer = None
    answers, silent_updates, announced = 0, 0, False

    def announce() -> None:
        nonlocal announced
        if not announced:
            announced = True
            adding = ", ".join(f"{count} {kind}" for kind, count in coming.items())
            print(f"dltrain: waiting for the cluster's autoscaler (up to ray.wait_for_workers_s={wait_s:g} s): "
                  f"resources need {demand}; the cluster has {before} now"
                  f"{f'; adding {adding} node(s)' if adding else ''}", flush=True)  # fmt: skip

    def listen() -> ray_private.AutoscalerReport | None:
        """The autoscaler's latest report, heard as an answer to the demand if it read it."""
        nonlocal posted, last_answer, answers, silent_updates, coming
        report = ray_private.autoscaler_report()
        if report is not None and posted is None and ours in report.pending:
            posted = report.state - 1
        if report is not None and posted is not None and report.update > posted:
            coming = report.adding or coming
            if report.update != last_answer:
                last_answer, answers = report.update, answers + 1
                silent = not report.adding and _slots(_nodes(), per_worker) < workers
                silent_updates = silent_updates + 1 if silent else 0
        return report

    try:
        while not ray.wait([group.ready()], timeout=_POLL_S)[0]:
            waited, report = time.monotonic() - started, listen()
            if report is not None and report.infeasible is not None and ours in report.infeasible:
                raise DltrainError(
                    f"resources need {demand}; the cluster's autoscaler reports that no node type it may add can "
                    f"hold them (the cluster has {_has(per_worker)} now): lower resources.num_workers, or add a "
                    "larger node type to the cluster's config"
                )
            if report is not None and report.infeasible is None and silent_updates >= _SILENT_UPDATES:
                raise DltrainError(
                    f"resources need {demand}; the cluster's autoscaler adds no node for them (no node type, within "
                    f"its max_workers, can hold them; the cluster has {_has(per_worker)} now): lower "
                    "resources.num_workers, or add a larger node type to the cluster's config"
                )
            # The autoscaler has answered once it says what it adds, or after two answers that add nothing.
            if coming or answers >= 2 or waited > _ANNOUNCE_S:
                announce()
            if waited > wait_s:
                raise DltrainError(
                    f"resources need {demand}; the cluster's autoscaler did not add them within "
                    f"ray.wait_for_workers_s={wait_s:g} s (the cluster has {_has(per_worker)} now)"
                )
        # The nodes can be up before the autoscaler reports the update that added them (the tests' nodes start in a
        # second): its answer is waited for, an update apart at most, so that the line names them.
        answer_by = time.monotonic() + _UPDATE_S
        while not announced and posted is not None and not answers and time.monotonic() < answer_by:
            time.sleep(_POLL_S)
            listen()
        announce()
        print(f"dltrain: {demand} placed after {time.monotonic() - started:.0f} s; the cluster has "
              f"{_has(per_worker)} now", flush=True)  # fmt: skip
    finally:
        remove_placement_group(group)
