"""The Ray internals dltrain reads (dltrain/ray_private.py) are still where Ray 2.60 had them: importing the module
and reading the embedded Ray's autoscaler report fail loudly after an upgrade that moved them."""

import time
from pathlib import Path

from dltrain import ray_private

REPORT_TIMEOUT_S = 60  # the embedded Ray's monitor reports every 5 s


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
