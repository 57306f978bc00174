"""The Ray internals dltrain reads (dltrain/ray_private.py) are still where Ray 2.60 had them: importing the module
and reading the embedded Ray's autoscaler report fail loudly after an upgrade that moved them."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import ray
import ray.train
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from dltrain import lifecycle, ray_private

REPORT_TIMEOUT_S = 60  # the embedded Ray's monitor reports every 5 s
ABORT_TIMEOUT_S = 60  # an abort takes about 2 s; a request left behind would stay for 180 s


def test_the_embedded_rays_autoscaler_reports_and_adds_no_nodes(ray_cluster):
    deadline = time.monotonic() + REPORT_TIMEOUT_S
    while not ray_private.autoscaler_reported():
        assert time.monotonic() < deadline, "the embedded Ray's autoscaler never reported"
        time.sleep(0.5)
    assert ray_private.autoscaler_report() is None  # its read-only provider adds no node


def test_bundles_compare_as_ray_rounds_resources():
    assert ray_private.bundle({"GPU": 1, "CPU": 0.33333333, "memory": 0}) == (("CPU", 0.3333), ("GPU", 1.0))


def test_ray_trains_controller_states_tell_running_workers_from_waiting_ones():
    from ray.train.v2._internal.execution.controller import state  # where Ray Train 2.60 keeps them

    assert ray_private.workers_running(state.RunningState())
    assert not ray_private.workers_running(state.InitializingState())
    assert not ray_private.workers_running(state.ReschedulingState(training_failed_error=RuntimeError("lost")))
    assert callable(ray_private.ControllerCallback.after_controller_state_update)  # the hook WaitForWorkers uses


def test_the_single_machine_switch_is_off_in_its_block_only():
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    with ray_private.single_machine_switch():
        assert ray_constants.ENABLE_RAY_CLUSTER is False
    assert ray_constants.ENABLE_RAY_CLUSTER is before
    assert (ray_private.SINGLE_MACHINE_VARIABLE, ray_private.GCS_PORT_VARIABLE) == (
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",  # what `ray start` and its processes read from the environment
        "RAY_GCS_SERVER_PORT",
    )
    assert Path(ray_private.system_temp_dir()).is_dir()


def _wait_to_be_stopped(config: dict) -> None:
    Path(config["started"]).write_text(str(os.getpid()))
    threading.Event().wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_an_interrupted_ray_train_run_is_aborted_and_withdraws_its_resource_request(ray_cluster, tmp_path):
    """Ctrl-C (here SIGTERM) in lifecycle.fit aborts a Ray trainer's run as Ray Train's own Ctrl-C would, on a Ray
    that outlives the run's driver (here this process and its Ray go on, as a notebook's do): the worker stops, and
    the resources Ray Train asked the cluster for, which an elastic run there would count as taken for 3 minutes,
    are no longer reserved."""
    started = tmp_path / "started"
    trainer = DataParallelTrainer(
        _wait_to_be_stopped,
        train_loop_config={"started": str(started)},
        scaling_config=ray.train.ScalingConfig(num_workers=1),
        run_config=ray.train.RunConfig(storage_path=str(tmp_path)),
    )
    requester = f"train-{trainer.train_run_context.run_id}"  # Ray Train's name for its run's request
    reserved_while_running = []

    def interrupt_once_started() -> None:
        while not started.exists():
            time.sleep(0.1)
        coordinator = ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
        reserved_while_running.append(ray.get(coordinator.get_reserved_resources.remote(requester)))
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=interrupt_once_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        lifecycle.fit(trainer, abort_on_interrupt=True)
    assert reserved_while_running[0], "the running worker's resources were never reserved"
    coordinator = ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
    worker_pid, deadline = int(started.read_text()), time.monotonic() + ABORT_TIMEOUT_S
    while ray.get(coordinator.get_reserved_resources.remote(requester)) or _alive(worker_pid):
        assert time.monotonic() < deadline, "the aborted run's worker still runs, or its resources are still reserved"
        time.sleep(0.2)
