"""dltrain on a Ray cluster that starts with no GPU node and grows through Ray's real autoscaler (its fake
multi-node provider, which starts each node it adds as Ray processes on this machine).

Under autoscaler v1 a `resources=large` run waits for the autoscaler's 4-GPU node, completes, withdraws what it
asked for, and the idle node is removed; a request that no node type can ever hold fails in one line; a sweep of
two 2-GPU trials completes. Under autoscaler v2 (which Ray's `ray up` starts by default) a `resources=small` run
completes the same way, and the impossible request fails from v2's own verdict.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.autoscaling_cluster import GCS_ADDRESS, autoscaling_cluster

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 600
# An impossible request must fail well before the default ray.wait_for_workers_s (600 s): a run still waiting when
# this runs out fails the test.
IMPOSSIBLE_TIMEOUT_S = 240
# The run's request is withdrawn and its node idles: the autoscaler removes it after IDLE_TIMEOUT_MINUTES.
SCALE_DOWN_TIMEOUT_S = 180
TINY = ["dataset.limit=1280", "trainer.batch_size=64", "trainer.epochs=1", "trainer.progress=epochs"]


@pytest.fixture(scope="class")
def v1():
    with autoscaling_cluster(version=1) as cluster:
        yield cluster


@pytest.fixture(scope="class")
def v2():
    with autoscaling_cluster(version=2) as cluster:
        yield cluster


def _dltrain(cluster, real_data: Path, storage: Path, *overrides: str, timeout: float = RUN_TIMEOUT_S):
    """`python -m dltrain` on the head, against the cluster's address, with the real data into `storage`."""
    command = cluster.in_namespace(
        sys.executable, "-m", "dltrain", f"ray.address={GCS_ADDRESS}", f"dataset.path={real_data}",
        f"storage.uri={storage}", *TINY, *overrides,
    )  # fmt: skip
    return subprocess.run(command, env=cluster.env(), capture_output=True, text=True, timeout=timeout)


# A driver that asks for one 1-GPU worker at once, as a run does before Ray Train starts it, without the run.
_WAIT = """
import sys, ray
from dltrain import capacity
from dltrain.job import ResourcesConfig
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
resources = ResourcesConfig(num_workers=1, use_gpu=True, cpus_per_worker=None)
capacity.ensure_capacity(resources, {"CPU": 1.0, "GPU": 1.0}, 120, capacity.autoscaled(embedded=False))
"""


def _status(folder: Path) -> dict:
    return json.loads((folder / "status.json").read_text())


def _completes_after_the_autoscaler_adds_a_node(cluster, real_data, storage, resources: str, workers: int) -> None:
    assert cluster.status()["gpus"] == 0, "the cluster must start with no GPU node"
    result = _dltrain(cluster, real_data, storage, f"resources={resources}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    demand = f"{workers} workers x {{CPU: 1, GPU: 1}}"
    lines = result.stdout.splitlines()
    waiting = [line for line in lines if line.startswith("dltrain: waiting for the cluster's autoscaler")]
    assert len(waiting) == 1 and demand in waiting[0] and "the cluster has 0 CPU, 0 GPU now" in waiting[0], lines
    assert "adding 1 gpu4 node(s)" in waiting[0]  # the autoscaler said which node type is coming
    assert any(line.startswith(f"dltrain: {demand} placed after ") for line in lines), lines
    (run,) = [folder for folder in storage.iterdir() if folder.is_dir()]
    assert _status(run)["status"] == "COMPLETED"
    logs = sorted(path.name.split("-pid")[0] for path in (run / "logs").glob("worker-*.log"))
    assert logs == [f"worker-{rank}" for rank in range(workers)]


def _impossible_request_fails_in_one_line(cluster, real_data, storage, verdict: str) -> None:
    """8 one-GPU workers, where the largest node type has 4 GPUs and there is one such node at most."""
    result = _dltrain(cluster, real_data, storage, "resources=large", "resources.num_workers=8",
                      timeout=IMPOSSIBLE_TIMEOUT_S)  # fmt: skip
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("dltrain: error:")]
    assert len(error) == 1, result.stderr
    assert error[0].startswith(f"dltrain: error: resources need 8 workers x {{CPU: 1, GPU: 1}}; the cluster's "
                               f"autoscaler {verdict}"), error  # fmt: skip
    assert error[0].endswith("now): lower resources.num_workers, or add a larger node type to the cluster's config")
    assert "Traceback" not in result.stderr
    (run,) = [folder for folder in storage.iterdir() if folder.is_dir()]
    assert _status(run)["status"] == "FAILED" and "8 workers x {CPU: 1, GPU: 1}" in _status(run)["error"]
    # Its placement group went with it: nothing is left waiting.
    cluster.wait_for(lambda status: not status["demand"][f"v{cluster.version}"], 60, "the demand to be withdrawn")


class TestAutoscalerV1:
    def test_large_run_waits_for_the_gpu_node_then_the_idle_node_goes(self, v1, real_data, tmp_path):
        _completes_after_the_autoscaler_adds_a_node(v1, real_data, tmp_path, "large", 4)
        # Nothing the run asked for is left (Ray Train's resource request withdrawn, the placement groups removed),
        # so the autoscaler removes the node once it has idled for its idle_timeout_minutes.
        v1.wait_for(lambda status: not status["demand"]["v1"] and status["gpus"] == 0, SCALE_DOWN_TIMEOUT_S,
                    "the demand to be withdrawn and the idle GPU node removed")  # fmt: skip

    def test_sweep_of_two_gpu_trials_waits_for_the_gpu_node_and_completes(self, v1, real_data, tmp_path):
        assert v1.status()["gpus"] == 0, "the cluster must start with no GPU node"
        result = _dltrain(
            v1, real_data, tmp_path, "resources=medium", "sweep=grid", "sweep.max_concurrent_trials=2",
            "sweep.space.trainer.learning_rate='choice([0.001, 0.003])'", "sweep.space.model.dropout='choice([0.3])'",
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "dltrain: waiting for the cluster's autoscaler" in result.stdout  # as a run waits
        sweep_id = result.stdout.split()[2]
        summary = json.loads((tmp_path / sweep_id / "summary.json").read_text())
        assert summary["trials"] == summary["completed"] == 2
        trials = [folder for folder in tmp_path.iterdir() if folder.name.startswith(f"{sweep_id}-")]
        assert len(trials) == 2 and all(_status(trial)["status"] == "COMPLETED" for trial in trials)
        assert all(len(list((trial / "logs").glob("worker-*.log"))) == 2 for trial in trials)

    def test_impossible_request_fails_in_one_line_naming_gpus(self, v1, real_data, tmp_path):
        _impossible_request_fails_in_one_line(
            v1, real_data, tmp_path, "adds no node for them (no node type, within its max_workers, can hold them;"
        )


class TestAutoscalerV2:
    def test_small_run_waits_for_the_gpu_node(self, v2, real_data, tmp_path):
        _completes_after_the_autoscaler_adds_a_node(v2, real_data, tmp_path, "small", 1)
        v2.wait_for(lambda status: not status["demand"]["v2"], SCALE_DOWN_TIMEOUT_S, "the demand to be withdrawn")

    def test_impossible_request_fails_from_the_autoscalers_verdict(self, v2, real_data, tmp_path):
        _impossible_request_fails_in_one_line(
            v2, real_data, tmp_path, "reports that no node type it may add can hold them"
        )


def test_a_wait_begun_as_the_cluster_starts_names_the_node_type_it_adds():
    """At v2's first report its head instance is still listed as coming, its updates after the demand is posted
    may not have read it yet, and a fake node is up within 2 s of the update that adds it: the waiting line still
    names the node type the autoscaler adds, not the head's."""
    # A cluster of its own (after the class's), fresh: the wait begins at its autoscaler's first report.
    with autoscaling_cluster(version=2) as cluster:
        result = subprocess.run(cluster.in_namespace(sys.executable, "-c", _WAIT, GCS_ADDRESS), env=cluster.env(),
                                capture_output=True, text=True, timeout=RUN_TIMEOUT_S)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    waiting = [line for line in result.stdout.splitlines() if line.startswith("dltrain: waiting for")]
    assert len(waiting) == 1 and waiting[0].endswith("; adding 1 gpu4 node(s)"), result.stdout
