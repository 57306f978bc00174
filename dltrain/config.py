"""Validate the composed Hydra config and resolve it into the typed Job (job.py) that the driver and workers use;
and a Job as the plain mapping a run's config.yaml saves, which resume=, rerun= and a sweep's trials read back.

Strict: an unknown key or a bad value raises DltrainError naming the key, the value and what is allowed,
before anything starts. The checks run on the plain mapping, with dltrain's own one-line messages; only a mapping
that passes them becomes a Job (plain frozen dataclasses: no schema library stands between the user and those
messages).
"""

import copy
import dataclasses
import importlib
import importlib.util
import inspect
import math
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from dltrain import formatting, search_space
from dltrain.data import DATASETS
from dltrain.errors import DltrainError
from dltrain.frameworks import FRAMEWORKS
from dltrain.job import (
    AshaConfig,
    FashionMnistConfig,
    FifoConfig,
    FrameworkConfig,
    ImageFolderConfig,
    Job,
    MedianConfig,
    ModelConfig,
    RayConfig,
    ResourcesConfig,
    SearchConfig,
    StorageConfig,
    SweepConfig,
    TrackingConfig,
    TrainerConfig,
)

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")  # Keras dtype policies a model is built under
PROGRESS_MODES = ("auto", "bar", "lines", "epochs", "none")  # how the console shows an epoch's progress
EPOCH_METRICS = ("val_accuracy", "val_loss", "accuracy", "loss")  # what every epoch reports, so what a sweep ranks
SCHEDULERS = ("asha", "median", "fifo")
SEARCH_ALGORITHMS = ("random", "grid", "bayes")
SEARCHABLE = ("model", "trainer", "dataset")  # sections a sweep may vary; resources and storage are per sweep
MAX_SEED = 2**32 - 1  # NumPy's and TensorFlow's seeds are unsigned 32-bit integers
MAX_IMAGE_SIZE = 1024  # pixels per side: a batch of 128 RGB images of 1024x1024 is 1.6 GB of float32 already


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite number: inf and nan are never a setting (a learning rate of inf trains nothing)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_seed(value: Any) -> bool:
    return _is_int(value) and 0 <= value <= MAX_SEED


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _is_mlflow_server(value: Any) -> bool:
    """An http(s):// URL with a host and no credentials (a saved config would hold them redacted, as ***)."""
    if not isinstance(value, str):
        return False
    parts = urllib.parse.urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and "@" not in parts.netloc


# section -> key -> (check, what is allowed)
_RULES: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "trainer": {
        "epochs": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "learning_rate": (lambda v: _is_number(v) and v > 0, "a number > 0"),
        "optimizer": (lambda v: v in OPTIMIZERS, "one of " + ", ".join(OPTIMIZERS)),
        "lr_schedule": (lambda v: v in LR_SCHEDULES, "one of " + ", ".join(LR_SCHEDULES)),
        "seed": (_is_seed, f"an integer from 0 to {MAX_SEED} (2**32 - 1)"),
        "deterministic": (lambda v: isinstance(v, bool), "true or false"),
        "max_failures": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        "keep_checkpoints": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "progress": (lambda v: v in PROGRESS_MODES, "one of " + ", ".join(PROGRESS_MODES)),
        "steps_per_execution": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "precision": (lambda v: v in PRECISIONS, "one of " + ", ".join(PRECISIONS)),
        "jit_compile": (lambda v: v == "auto" or isinstance(v, bool), "auto, true or false"),
        "callbacks": (
            lambda v: isinstance(v, dict) and all(isinstance(c, dict) and "_target_" in c for c in v.values()),
            "a mapping of names to {_target_: a Keras callback class, ...its arguments}",
        ),
    },
    "resources": {
        "num_workers": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "use_gpu": (lambda v: isinstance(v, bool), "true or false"),
        "cpus_per_worker": (_optional(lambda v: _is_number(v) and v > 0), "null or a number > 0"),
        "min_workers": (_optional(lambda v: _is_int(v) and v >= 1), "null or an integer >= 1"),
        "local_mode": (lambda v: v == "auto" or isinstance(v, bool), "auto, true or false"),
    },
    "dataset": {"name": (lambda v: v in DATASETS, "one of " + ", ".join(DATASETS))},
    "storage": {
        "uri": (_optional(lambda v: isinstance(v, str) and v != ""), "null, a folder or s3://bucket/prefix"),
        "endpoint_url": (
            _optional(lambda v: isinstance(v, str) and v.startswith(("http://", "https://"))),
            "null or an http(s):// URL",
        ),
        "region": (_optional(lambda v: isinstance(v, str) and v != ""), "null or an AWS region name"),
        "create_bucket": (lambda v: isinstance(v, bool), "true or false"),
        "retry_seconds": (lambda v: _is_number(v) and v >= 0, "a number >= 0 (seconds)"),
    },
    "framework": {"name": (lambda v: v in FRAMEWORKS, "one of " + ", ".join(FRAMEWORKS))},
    "ray": {
        "address": (_optional(lambda v: isinstance(v, str) and v != ""), "null or a Ray address"),
        "wait_for_workers_s": (lambda v: _is_number(v) and v > 0, "a number > 0 (seconds)"),
    },
    "tracking": {
        "mlflow_uri": (
            _optional(_is_mlflow_server),
            "null or an MLflow tracking server's http(s):// URL, without credentials (MLflow's client reads them "
            "from MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN)",
        ),
        "experiment": (lambda v: isinstance(v, str) and v.strip() != "", "an MLflow experiment name"),
    },
}


def _is_class_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and len(set(value)) == len(value)
        and all(_is_int(number) and 0 <= number <= 9 for number in value)
    )


_PATH = (_optional(lambda v: isinstance(v, str) and v != ""), "null, a folder or s3://bucket/prefix")
_SPLIT = (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")
_AUGMENTATION = {
    "flip": (lambda v: isinstance(v, bool), "true or false"),
    "shift": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (pixels)"),
}
# dataset.name -> the keys of that data set, beside `name`
_DATASET_RULES: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "fashion_mnist": {
        "path": _PATH,
        "mirror": (lambda v: isinstance(v, str) and "://" in v, "a URL"),
        "classes": (_optional(_is_class_list), "null or a list of distinct class numbers 0-9"),
        "per_class": (_optional(lambda v: _is_int(v) and v >= 1), "null or an integer >= 1"),
        "limit": (_optional(lambda v: _is_int(v) and v >= 1), "null or an integer >= 1"),
        "validation_split": _SPLIT,
        **_AUGMENTATION,
    },
    "image_folder": {
        "path": _PATH,
        "manifest": (
            _optional(lambda v: isinstance(v, str) and v.lower().endswith((".csv", ".parquet"))),
            "null or a .csv or .parquet file (local or s3://)",
        ),
        "label": (lambda v: isinstance(v, str) and v != "", "a column name"),
        "min_per_class": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "image_size": (
            lambda v: _is_int(v) and 8 <= v <= MAX_IMAGE_SIZE,
            f"an integer from 8 to {MAX_IMAGE_SIZE} (pixels)",
        ),
        "channels": (lambda v: v in (1, 3), "1 or 3"),
        "validation_split": _SPLIT,
        "test_split": (
            _optional(lambda v: _is_number(v) and 0 < v < 1),
            "null (a split column, else 0.1) or a number in (0, 1)",
        ),
        "shuffle_buffer": (lambda v: _is_int(v) and v >= 1, "an integer >= 1 (images)"),
        "allow_outside_paths": (lambda v: isinstance(v, bool), "true or false"),
        **_AUGMENTATION,
    },
}
# The type each section (and each kind of data set and scheduler) becomes once its checks have passed.
_TYPES = {
    "trainer": TrainerConfig,
    "resources": ResourcesConfig,
    "storage": StorageConfig,
    "framework": FrameworkConfig,
    "ray": RayConfig,
    "tracking": TrackingConfig,
}
_DATASET_TYPES = {"fashion_mnist": FashionMnistConfig, "image_folder": ImageFolderConfig}
_SCHEDULER_TYPES = {"asha": AshaConfig, "median": MedianConfig, "fifo": FifoConfig}
_SECTIONS = (*_RULES, "model", "resume", "rerun", "sweep")

_SWEEP_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_samples": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "metric": (lambda v: v in EPOCH_METRICS, "one of " + ", ".join(EPOCH_METRICS)),
    "mode": (lambda v: v in ("max", "min"), "max or min"),
    "max_concurrent_trials": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "scheduler": (lambda v: isinstance(v, dict), "a mapping with a name"),
    "search": (lambda v: isinstance(v, dict), "a mapping with an algorithm"),
    "space": (lambda v: isinstance(v, dict) and v != {}, "a non-empty mapping of config keys to search expressions"),
}
# scheduler name -> its keys beside `name`
_SCHEDULER_RULES: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "asha": {
        "grace_period": (lambda v: _is_int(v) and v >= 1, "an integer >= 1 (epochs)"),
        "reduction_factor": (lambda v: _is_number(v) and v > 1, "a number > 1"),
    },
    "median": {
        "grace_period": (lambda v: _is_int(v) and v >= 1, "an integer >= 1 (epochs)"),
        "min_samples_required": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    },
    "fifo": {},
}
_SEARCH_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "algorithm": (lambda v: v in SEARCH_ALGORITHMS, "one of " + ", ".join(SEARCH_ALGORITHMS)),
    "seed": (_optional(_is_seed), f"null or an integer from 0 to {MAX_SEED} (2**32 - 1)"),
}


def _check_values(section: str, given: dict, rules: dict[str, tuple[Callable[[Any], bool], str]]) -> None:
    _check_keys(section, given, list(rules))
    for key, (check, allowed) in rules.items():
        if not check(given[key]):
            raise DltrainError(f"{section}.{key}={given[key]!r} is invalid: expected {allowed}")


def _check_keys(section: str, given: dict, allowed: list[str]) -> None:
    for key in given:
        if key not in allowed:
            raise DltrainError(f"{section}.{key}: unknown key; valid keys: {', '.join(sorted(allowed))}")
    for key in allowed:
        if key not in given:
            raise DltrainError(f"{section}.{key} is missing")


def _defaults(section_type: type) -> dict[str, Any]:
    """The keys of a section that its config may leave out, and what they then mean: the type's field defaults."""
    return {
        field.name: field.default
        for field in dataclasses.fields(section_type)
        if field.default is not dataclasses.MISSING
    }


def import_target(path: str, key: str = "model._target_") -> Callable:
    """The object a `_target_` string such as `package.module.function` names; DltrainError naming `key` if none."""
    module_name, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise DltrainError(f"{key}={path}: cannot import it ({error})") from error


def _check_model(model: dict) -> None:
    if not isinstance(model.get("_target_"), str):
        raise DltrainError("model._target_ is missing: name a function (input_shape, num_classes, ...) -> keras.Model")
    builder = import_target(model["_target_"])
    try:
        inspect.signature(builder)
    except (TypeError, ValueError):  # a module, a constant, a built-in without a signature
        raise DltrainError(f"model._target_={model['_target_']} is not a function with a signature: name a function "
                           "(input_shape, num_classes, ...) -> keras.Model") from None  # fmt: skip
    hyperparameters = {key: value for key, value in model.items() if key != "_target_"}
    try:
        inspect.signature(builder).bind(input_shape=(1,), num_classes=1, **hyperparameters)
    except TypeError as error:
        accepted = [
            name for name in inspect.signature(builder).parameters if name not in ("input_shape", "num_classes")
        ]
        raise DltrainError(f"model: {error} for {model['_target_']}; its keys are: {', '.join(accepted)}") from error


def _nested_targets(value: Any, path: str) -> list[str]:
    """The dotted keys below `value` (a callback's arguments) that Hydra would instantiate: `_target_` keys."""
    if isinstance(value, dict):
        here = [path] if "_target_" in value else []
        return here + [found for key, item in value.items() for found in _nested_targets(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [found for index, item in enumerate(value) for found in _nested_targets(item, f"{path}.{index}")]
    return []


def _check_callbacks(callbacks: dict) -> None:
    """Every callback is a Keras callback class, imported now: a `_target_` that does not import, or names anything
    else (a function that runs a command, from a tampered config.yaml), fails here, not in the workers."""
    for name, callback in callbacks.items():
        key = f"trainer.callbacks.{name}"
        arguments = {argument: value for argument, value in callback.items() if argument != "_target_"}
        if nested := _nested_targets(arguments, key) + [f"{key}._partial_"] * ("_partial_" in arguments):
            raise DltrainError(f"{nested[0]}: a callback's arguments are values, not objects to build (only "
                               f"{key}._target_ is built)")  # fmt: skip
        target = import_target(callback["_target_"], f"{key}._target_")
        import keras  # here: a config without callbacks is checked without it

        if not (isinstance(target, type) and issubclass(target, keras.callbacks.Callback)):
            raise DltrainError(f"{key}._target_={callback['_target_']} is not a Keras callback class (a subclass of "
                               "keras.callbacks.Callback)")  # fmt: skip


def resolve(cfg: DictConfig) -> Job:
    """Validate the composed config, with every interpolation resolved, into a Job."""
    try:
        mapping = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        raise DltrainError(f"{error.full_key} is required: set {error.full_key}=...") from error
    except Exception as error:  # OmegaConf raises several types for bad interpolations
        raise DltrainError(f"config cannot be resolved: {str(error).splitlines()[0]}") from error
    return from_mapping(mapping)


def from_mapping(mapping: dict) -> Job:
    """Check a plain config mapping (a composed config, or one a run saved) and return it as a Job; the local
    paths in it made absolute."""
    job = copy.deepcopy(mapping)
    job.setdefault("sweep", None)  # the sweep group is chosen only for sweeps
    _check_keys("config", job, list(_SECTIONS))
    for key in ("resume", "rerun"):
        if job[key] is not None and not isinstance(job[key], str):
            raise DltrainError(f"{key}={job[key]!r} is invalid: expected a run or sweep id")
    if job["resume"] is not None and job["rerun"] is not None:
        raise DltrainError(f"resume={job['resume']} and rerun={job['rerun']}: give one of them")
    for section in _RULES:
        if not isinstance(job[section], dict):
            raise DltrainError(f"{section} must be a mapping, got {job[section]!r}")
        if section in _TYPES:
            job[section] = _defaults(_TYPES[section]) | job[section]
    if (dataset_type := _DATASET_TYPES.get(job["dataset"].get("name"))) is not None:
        job["dataset"] = _defaults(dataset_type) | job["dataset"]
    _check_job(job)
    if job["sweep"] is not None:
        _check_sweep(job)
    job["dataset"]["path"] = _absolute(job["dataset"]["path"])
    if job["dataset"].get("manifest"):
        job["dataset"]["manifest"] = _absolute(job["dataset"]["manifest"])
    job["storage"]["uri"] = _absolute(job["storage"]["uri"])
    return _typed(job)


def _typed(job: dict) -> Job:
    """A checked config mapping as a Job."""
    model, dataset, sweep = job["model"], job["dataset"], job["sweep"]
    if sweep is not None:
        scheduler = _SCHEDULER_TYPES[sweep["scheduler"]["name"]](**sweep["scheduler"])
        sweep = SweepConfig(**sweep | {"scheduler": scheduler, "search": SearchConfig(**sweep["search"])})
    return Job(
        model=ModelConfig(
            target=model["_target_"], hyperparameters={key: value for key, value in model.items() if key != "_target_"}
        ),
        dataset=_DATASET_TYPES[dataset["name"]](**dataset),
        sweep=sweep,
        resume=job["resume"],
        rerun=job["rerun"],
        **{section: section_type(**job[section]) for section, section_type in _TYPES.items()},
    )


def to_mapping(job: Job) -> dict[str, Any]:
    """`job` as the plain nested mapping that a run's config.yaml saves: the composed config's keys and values."""
    mapping = {field.name: getattr(job, field.name) for field in dataclasses.fields(job)}
    for section, value in mapping.items():
        if dataclasses.is_dataclass(value):
            mapping[section] = dataclasses.asdict(value)
    mapping["model"] = {"_target_": job.model.target, **copy.deepcopy(job.model.hyperparameters)}
    if job.sweep is None:  # where resolve adds it when Hydra composed no sweep group: last
        mapping["sweep"] = mapping.pop("sweep")
    return mapping


def trial_job(job: Job, values: dict[str, Any]) -> Job:
    """The job of one of the sweep `job`'s trials, which gives each dotted key in `values` its value (a run of its
    own: no sweep, resume or rerun), checked as resolve checks a job; KeyError names a key that does not exist."""
    mapping = search_space.assign(to_mapping(job), values) | {"sweep": None, "resume": None, "rerun": None}
    return from_mapping(mapping)


def completed_config(saved: dict, defaults: dict) -> dict:
    """A run's saved config, with the keys dltrain has gained since it was saved taken from `defaults` (whose
    values for new keys keep the old behaviour); a model's keys only from defaults for the same builder."""
    completed = defaults | saved
    for section, keys in defaults.items():
        same_model = section != "model" or keys.get("_target_") == saved.get("model", {}).get("_target_")
        if isinstance(keys, dict) and isinstance(saved.get(section), dict) and same_model:
            completed[section] = keys | saved[section]
    return completed


def from_saved(saved: dict, current: Job, **changes: str | None) -> Job:
    """The Job of a run's saved config (resume=, rerun=): the keys dltrain has gained since it was saved from
    `current`, and so are the storage and Ray settings (the saved config holds no credentials); then `changes`
    (resume, rerun); checked as resolve checks a job."""
    now = to_mapping(current)
    return from_mapping(completed_config(saved, now) | {"storage": now["storage"], "ray": now["ray"], **changes})


@dataclasses.dataclass(frozen=True)
class SavedOverview:
    """What the run listings, resume and MLflow's mirroring read of a saved config.yaml, which an older dltrain
    may have saved with fewer keys."""

    model: str  # ModelConfig.short_name, `?` without a builder
    dataset: str  # the data set's name, `?` if none
    workers: str  # "4", or "2-4" for an elastic run
    epochs: int | None
    sweep: bool  # whether the config is a sweep's
    framework: str  # tensorflow for a run saved before framework=jax
    tracking: TrackingConfig  # where the run mirrors to (mlflow_uri None: nowhere, as before tracking)


def saved_overview(saved: dict) -> SavedOverview:
    """The overview of a saved config (`{}` for a run folder without one)."""
    model, resources = saved.get("model", {}), saved.get("resources", {})
    most = resources.get("num_workers", "?")
    fewest = resources.get("min_workers") or most
    return SavedOverview(
        model=ModelConfig(
            target=model.get("_target_", "?"),
            hyperparameters={key: value for key, value in model.items() if key != "_target_"},
        ).short_name,
        dataset=saved.get("dataset", {}).get("name", "?"),
        workers=formatting.workers(fewest, most),
        epochs=saved.get("trainer", {}).get("epochs"),
        sweep=saved.get("sweep") is not None,
        framework=saved.get("framework", {}).get("name", "tensorflow"),
        tracking=TrackingConfig(**saved.get("tracking", {})),
    )


def _absolute(location: str | None) -> str | None:
    """A local folder made absolute against this directory (Ray runs the workers in folders of its own);
    None and URIs (s3://, or a scheme the storage rejects with its own error) unchanged."""
    if location is None or ("://" in location and not location.startswith("file://")):
        return location
    return str(Path(location.removeprefix("file://")).expanduser().absolute())


def _check_job(job: dict) -> None:
    """Every section's keys and values, the model's keys, and the rules that tie sections together."""
    for section, rules in _RULES.items():
        given = job[section]
        if section == "dataset" and given.get("name") in DATASETS:
            rules = rules | _DATASET_RULES[given["name"]]
        _check_values(section, given, rules)
    trainer, resources, dataset = job["trainer"], job["resources"], job["dataset"]
    worker_range = ResourcesConfig(**resources).worker_range
    least = worker_range[0]
    if least > resources["num_workers"]:
        raise DltrainError(
            f"resources.min_workers={least} exceeds resources.num_workers={resources['num_workers']}: "
            "an elastic run takes between min_workers and num_workers workers"
        )
    if resources["min_workers"] is None and trainer["batch_size"] % resources["num_workers"]:
        raise DltrainError(
            f"trainer.batch_size={trainer['batch_size']} is not divisible by resources.num_workers="
            f"{resources['num_workers']}: the global batch is split evenly over the workers"
        )
    # An elastic run keeps its global batch whatever number of workers it has, so every count must divide it.
    uneven = [count for count in range(least, resources["num_workers"] + 1) if trainer["batch_size"] % count]
    if resources["min_workers"] is not None and uneven:
        raise DltrainError(
            f"trainer.batch_size={trainer['batch_size']} is not divisible by {', '.join(map(str, uneven))} workers: "
            f"an elastic run (resources.min_workers={least} to num_workers={resources['num_workers']}) splits the "
            "global batch evenly over however many it has"
        )
    if resources["local_mode"] is True and worker_range != (1, 1):
        raise DltrainError(
            f"resources.local_mode=true trains in the driver's process, one worker: resources.num_workers="
            f"{resources['num_workers']} (min_workers={resources['min_workers']}) needs local_mode=auto or false"
        )
    if resources["local_mode"] is True and job["sweep"] is not None:
        raise DltrainError("resources.local_mode=true cannot be used with a sweep: each trial has its own Ray Train "
                           "worker; use local_mode=auto or false")  # fmt: skip
    if job["framework"]["name"] == "jax" and trainer["jit_compile"] is False:
        raise DltrainError("trainer.jit_compile=false with framework=jax: JAX compiles every step with XLA; use "
                           "jit_compile=auto or true")  # fmt: skip
    tensorflow = job["framework"]["name"] == "tensorflow"
    if tensorflow and trainer["jit_compile"] is True and not resources["use_gpu"] and resources["num_workers"] > 1:
        raise DltrainError(
            f"trainer.jit_compile=true with resources.num_workers={resources['num_workers']} CPU workers: XLA "
            "compiles the gradient all-reduce on GPUs only; use jit_compile=auto or false"
        )
    if dataset["name"] == "image_folder" and (dataset["path"] is None) == (dataset["manifest"] is None):
        raise DltrainError(
            f"dataset.path={dataset['path']} and dataset.manifest={dataset['manifest']}: give one of them, a folder "
            "of CLASS/*.png|jpg (or shards from dltrain data prepare) or a CSV/Parquet manifest"
        )
    if job["tracking"]["mlflow_uri"] is not None and importlib.util.find_spec("mlflow") is None:
        raise DltrainError(f"tracking.mlflow_uri={job['tracking']['mlflow_uri']}: MLflow's client is not installed: "
                           "pip install 'dltrain[mlflow]'")  # fmt: skip
    if dataset.get("limit") is not None:
        train_samples = dataset["limit"] - round(dataset["limit"] * dataset["validation_split"])
        if train_samples < trainer["batch_size"]:
            raise DltrainError(
                f"dataset.limit={dataset['limit']} leaves {train_samples} training samples, fewer than one "
                f"global batch (trainer.batch_size={trainer['batch_size']})"
            )
    # Last, as they import Keras (seconds): a mistake in the keys above is told at once.
    _check_model(job["model"])
    _check_callbacks(trainer["callbacks"])
    if dataset["name"] == "image_folder":
        size = dataset["image_size"]
    else:
        from dltrain.data.fashion_mnist import INPUT_SHAPE  # here: it imports Keras, as the model's check has

        size = INPUT_SHAPE[0]
    if dataset["shift"] >= size:
        raise DltrainError(f"dataset.shift={dataset['shift']} is invalid: expected an integer from 0 to {size - 1} "
                           f"(pixels: the images are {size}x{size})")  # fmt: skip


def _check_sweep(job: dict) -> None:
    """The sweep's settings, and every key of its search space with the values its trials may get."""
    sweep = job["sweep"]
    if not isinstance(sweep, dict):
        raise DltrainError(f"sweep must be a mapping, got {sweep!r}")
    _check_values("sweep", sweep, _SWEEP_RULES)
    scheduler = sweep["scheduler"]
    if scheduler.get("name") not in SCHEDULERS:
        raise DltrainError(f"sweep.scheduler.name={scheduler.get('name')!r} is invalid: expected one of "
                           f"{', '.join(SCHEDULERS)}")  # fmt: skip
    _check_values(
        "sweep.scheduler", {k: v for k, v in scheduler.items() if k != "name"}, _SCHEDULER_RULES[scheduler["name"]]
    )
    if scheduler.get("grace_period", 1) > job["trainer"]["epochs"]:
        raise DltrainError(
            f"sweep.scheduler.grace_period={scheduler['grace_period']} exceeds "
            f"trainer.epochs={job['trainer']['epochs']}"
        )
    _check_values("sweep.search", sweep["search"], _SEARCH_RULES)
    if sweep["metric"].startswith("val_") and job["dataset"]["validation_split"] == 0:
        raise DltrainError(f"sweep.metric={sweep['metric']} needs a validation set: dataset.validation_split > 0")

    algorithm = sweep["search"]["algorithm"]
    for path, expression in search_space.flatten(sweep["space"]).items():
        key = f"sweep.space.{path}"
        if path.split(".")[0] not in SEARCHABLE:
            raise DltrainError(f"{key}: only {', '.join(SEARCHABLE)} keys can be searched")
        try:
            dimension = search_space.parse(expression)
        except ValueError as error:
            raise DltrainError(f"{key}: {error}") from error
        if algorithm == "grid" and dimension.distribution != "choice":
            raise DltrainError(f"{key}={expression}: a grid sweep needs choice([...]) for every key")
        if (
            algorithm == "bayes"
            and dimension.distribution == "choice"
            and not all(value is None or isinstance(value, (bool, int, float, str)) for value in dimension.candidates())
        ):
            raise DltrainError(f"{key}={expression}: the bayes search chooses among numbers and strings only")
        for value in dimension.candidates():
            try:
                trial = search_space.assign(job, {path: value})
            except KeyError:
                valid = ", ".join(sorted(job[path.split(".")[0]]))
                raise DltrainError(f"{key}: unknown key; valid keys: {valid}") from None
            try:
                _check_job(trial)
            except DltrainError as error:
                raise DltrainError(f"{key}={expression}: a trial would get {path}={value!r}: {error}") from None
