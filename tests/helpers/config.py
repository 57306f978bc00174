"""Configs as `python -m dltrain` composes and resolves them."""

from omegaconf import DictConfig

from dltrain.config import resolve
from dltrain.driver import compose
from dltrain.job import Job


def compose_config(*overrides: str) -> DictConfig:
    """The config `python -m dltrain *overrides` would get."""
    return compose(list(overrides))


def resolved(*overrides: str) -> Job:
    """The Job `python -m dltrain *overrides` would train."""
    return resolve(compose_config(*overrides))
