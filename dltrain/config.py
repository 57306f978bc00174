"""Validate the composed Hydra config and resolve it into the plain dict that the driver and workers use.

Strict: an unknown key or a bad value raises DltrainError naming the key, the value and what is allowed,
before anything starts.
"""

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from dltrain.data import DATASETS
from dltrain.errors import DltrainError

FRAMEWORKS = ("tensorflow",)
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
LR_SCHEDULES = ("constant", "cosine")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


# section -> key -> (check, what is allowed)
_RULES: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "trainer": {
        "epochs": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "learning_rate": (lambda v: _is_number(v) and v > 0, "a number > 0"),
        "optimizer": (lambda v: v in OPTIMIZERS, "one of " + ", ".join(OPTIMIZERS)),
        "lr_schedule": (lambda v: v in LR_SCHEDULES, "one of " + ", ".join(LR_SCHEDULES)),
        "seed": (_is_int, "an integer"),
        "max_failures": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        "keep_checkpoints": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "callbacks": (
            lambda v: isinstance(v, dict) and all(isinstance(c, dict) and "_target_" in c for c in v.values()),
            "a mapping of names to {_target_: a Keras callback class, ...its arguments}",
        ),
    },
    "resources": {
        "num_workers": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "use_gpu": (lambda v: isinstance(v, bool), "true or false"),
        "cpus_per_worker": (_optional(lambda v: _is_number(v) and v > 0), "null or a number > 0"),
    },
    "dataset": {
        "name": (lambda v: v in DATASETS, "one of " + ", ".join(DATASETS)),
        "path": (_optional(lambda v: isinstance(v, str) and v != ""), "null or a folder"),
        "mirror": (lambda v: isinstance(v, str) and "://" in v, "a URL"),
        "limit": (_optional(lambda v: _is_int(v) and v >= 1), "null or an integer >= 1"),
        "validation_split": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
        "flip": (lambda v: isinstance(v, bool), "true or false"),
        "shift": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (pixels)"),
    },
    "storage": {
        "uri": (_optional(lambda v: isinstance(v, str) and v != ""), "null, a folder or s3://bucket/prefix"),
        "endpoint_url": (
            _optional(lambda v: isinstance(v, str) and v.startswith(("http://", "https://"))),
            "null or an http(s):// URL",
        ),
        "region": (_optional(lambda v: isinstance(v, str) and v != ""), "null or an AWS region name"),
        "create_bucket": (lambda v: isinstance(v, bool), "true or false"),
    },
    "framework": {"name": (lambda v: v in FRAMEWORKS, "one of " + ", ".join(FRAMEWORKS))},
    "ray": {"address": (_optional(lambda v: isinstance(v, str) and v != ""), "null or a Ray address")},
}
# Keys a config group option may leave out, and what they then mean (storage=local has no S3 settings).
_DEFAULTS = {"storage": {"endpoint_url": None, "region": None, "create_bucket": False}}
_SECTIONS = (*_RULES, "model", "resume")


def _check_keys(section: str, given: dict, allowed: list[str]) -> None:
    for key in given:
        if key not in allowed:
            raise DltrainError(f"{section}.{key}: unknown key; valid keys: {', '.join(sorted(allowed))}")
    for key in allowed:
        if key not in given:
            raise DltrainError(f"{section}.{key} is missing")


def import_target(path: str) -> Callable:
    """The object a `_target_` string such as `package.module.function` names."""
    module_name, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise DltrainError(f"model._target_={path}: cannot import it ({error})") from error


def _check_model(model: dict) -> None:
    if not isinstance(model.get("_target_"), str):
        raise DltrainError("model._target_ is missing: name a function (input_shape, num_classes, ...) -> keras.Model")
    builder = import_target(model["_target_"])
    hyperparameters = {key: value for key, value in model.items() if key != "_target_"}
    try:
        inspect.signature(builder).bind(input_shape=(1,), num_classes=1, **hyperparameters)
    except TypeError as error:
        accepted = [
            name for name in inspect.signature(builder).parameters if name not in ("input_shape", "num_classes")
        ]
        raise DltrainError(f"model: {error} for {model['_target_']}; its keys are: {', '.join(accepted)}") from error


def resolve(cfg: DictConfig) -> dict:
    """Validate the composed config and return it as a plain dict with every interpolation resolved."""
    try:
        job = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        raise DltrainError(f"{error.full_key} is required: set {error.full_key}=...") from error
    except Exception as error:  # OmegaConf raises several types for bad interpolations
        raise DltrainError(f"config cannot be resolved: {str(error).splitlines()[0]}") from error
    _check_keys("config", job, list(_SECTIONS))
    if job["resume"] is not None and not isinstance(job["resume"], str):
        raise DltrainError(f"resume={job['resume']!r} is invalid: expected a run id")
    for section, rules in _RULES.items():
        if not isinstance(job[section], dict):
            raise DltrainError(f"{section} must be a mapping, got {job[section]!r}")
        job[section] = _DEFAULTS.get(section, {}) | job[section]
        _check_keys(section, job[section], list(rules))
        for key, (check, allowed) in rules.items():
            value = job[section][key]
            if not check(value):
                raise DltrainError(f"{section}.{key}={value!r} is invalid: expected {allowed}")
    _check_model(job["model"])

    trainer, resources, dataset = job["trainer"], job["resources"], job["dataset"]
    if trainer["batch_size"] % resources["num_workers"]:
        raise DltrainError(
            f"trainer.batch_size={trainer['batch_size']} is not divisible by resources.num_workers="
            f"{resources['num_workers']}: the global batch is split evenly over the workers"
        )
    if dataset["limit"] is not None:
        train_samples = dataset["limit"] - round(dataset["limit"] * dataset["validation_split"])
        if train_samples < trainer["batch_size"]:
            raise DltrainError(
                f"dataset.limit={dataset['limit']} leaves {train_samples} training samples, fewer than one "
                f"global batch (trainer.batch_size={trainer['batch_size']})"
            )
    return job
