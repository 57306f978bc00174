"""Configs as `python -m dltrain` composes them."""

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from dltrain.__main__ import CONFIG_DIR


def compose_config(*overrides: str) -> DictConfig:
    """The config `python -m dltrain *overrides` would get."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))
