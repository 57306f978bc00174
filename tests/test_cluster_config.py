"""cluster.yaml, checked offline the way `ray up` checks it (Ray's own schema and defaults), with no cloud call."""

import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from dltrain.config import resolve

from helpers.config import compose_config

CLUSTER_YAML = Path(__file__).parent.parent / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _validate(config: dict) -> dict:
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_own_validation(cluster):
    prepared = _validate(cluster)
    assert prepared["head_node_type"] == "head"
    assert set(prepared["available_node_types"]) == {"head", "gpu1", "gpu4", "cpu"}


def test_the_head_takes_no_training_and_workers_cost_nothing_when_idle(cluster):
    types = cluster["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0}
    assert {name: types[name]["resources"].get("GPU", 0) for name in ("gpu1", "gpu4", "cpu")} == {
        "gpu1": 1, "gpu4": 4, "cpu": 0,
    }  # fmt: skip
    for name in ("gpu1", "gpu4", "cpu"):
        assert types[name]["min_workers"] == 0 and types[name]["max_workers"] >= 1
    assert cluster["idle_timeout_minutes"] > 0


def test_every_gpu_profile_fits_the_clusters_gpu_nodes(cluster):
    """resources=small/medium/large ask for 1/2/4 one-GPU workers; gpu4 nodes take them, several gpu1 nodes too."""
    types = cluster["available_node_types"].values()
    gpus_at_most = sum(kind["resources"].get("GPU", 0) * kind.get("max_workers", 0) for kind in types)
    for profile in ("small", "medium", "large"):
        resources = resolve(compose_config(f"resources={profile}")).resources
        assert resources.use_gpu and resources.num_workers <= gpus_at_most


def test_credentials_come_from_the_instance_role_not_the_file(cluster):
    text = CLUSTER_YAML.read_text().lower()
    assert "aws_access_key_id" not in text and "aws_secret_access_key" not in text
    for name, kind in cluster["available_node_types"].items():
        assert "instance-profile/" in kind["node_config"]["IamInstanceProfile"]["Arn"], name


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda c: c["available_node_types"]["gpu4"].update(gpus=4), "gpus"),
        (lambda c: c.update(head_node_type="gpu8"), "head_node_type"),
        (lambda c: c["available_node_types"]["gpu1"].update(min_workers=9, max_workers=9), "sum of `min_workers`"),
        (lambda c: c["available_node_types"]["cpu"].pop("resources"), "'resources' is a required property"),
    ],
)
def test_the_validation_catches_what_ray_up_would_reject(cluster, break_it, message):
    broken = copy.deepcopy(cluster)
    break_it(broken)
    with pytest.raises(Exception, match=message):
        _validate(broken)
