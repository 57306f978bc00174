"""Configs as `python -m dltrain` composes and resolves them."""

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from dltrain.__main__ import CONFIG_DIR
from dltrain.config import resolve
from dltrain.job import Job


def compose_config(*overrides: str) -> DictConfig:
    """The config `python -m dltrain *overrides` would get."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def resolved(*overrides: str) -> Job:
    """The Job `python -m dltrain *overrides` would train."""
    return resolve(compose_config(*overrides))
