"""The Ray internals dltrain reads (dltrain/ray_private.py) are still where Ray 2.60 had them: importing the module
and reading the embedded Ray's autoscaler report fail loudly after an upgrade that moved them."""

import time

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
