"""Config composition for every group option, and strict validation of keys and values."""

from dataclasses import asdict
from pathlib import Path

import pytest
import ray
import yaml
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from dltrain.cluster import trains_in_driver
from dltrain.config import from_mapping, from_saved, resolve, to_mapping, trial_job
from dltrain.driver import CONFIG_DIR
from dltrain.errors import DltrainError

from helpers.config import compose_config

GROUPS = ("model", "dataset", "resources", "storage", "framework", "sweep", "experiment")


def _options(group: str) -> list[str]:
    return sorted(path.stem for path in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def test_defaults_are_the_reference_recipe():
    job = resolve(compose_config())
    assert asdict(job.trainer) | {"callbacks": None} == {
        "epochs": 30, "batch_size": 128, "learning_rate": 0.001, "lr_schedule": "constant", "optimizer": "adam",
        "seed": 42, "deterministic": False, "max_failures": 2, "keep_checkpoints": 2, "progress": "auto",
        "callbacks": None, "steps_per_execution": 1, "precision": "float32", "jit_compile": "auto",
    }  # fmt: skip
    model = job.model.hyperparameters
    assert model["filters"] == [32, 64, 128] and model["dropout"] == 0.4
    assert model["padding"] == "valid" and model["batch_norm"] is False
    assert (job.dataset.flip, job.dataset.shift) == (False, 0)
    assert asdict(job.resources) == {
        "num_workers": 1,
        "use_gpu": False,
        "cpus_per_worker": None,
        "min_workers": None,
        "local_mode": "auto",
    }
    assert asdict(job.ray) == {"address": None, "wait_for_workers_s": 600}
    assert job.framework.name == "tensorflow"


@pytest.mark.parametrize(("group", "option"), [(group, option) for group in GROUPS for option in _options(group)])
def test_every_group_option_composes_and_validates(group, option):
    required = {"s3": ["storage.uri=s3://bucket/prefix"], "image_folder": ["dataset.path=/data/images"]}.get(option, [])
    job = resolve(compose_config(f"{group}={option}", *required))
    sections = {"model", "dataset", "resources", "storage", "framework", "trainer", "ray", "resume", "rerun", "sweep",
                "tracking"}  # fmt: skip
    assert set(to_mapping(job)) == sections
    assert (job.sweep is None) == (group != "sweep")
    assert set(asdict(job.storage)) == {"uri", "endpoint_url", "region", "create_bucket", "retry_seconds"}


@pytest.mark.parametrize(("group", "option"), [(group, option) for group in GROUPS for option in _options(group)])
def test_a_job_saves_the_composed_config_and_reads_it_back(group, option):
    """config.yaml holds the composed config's keys and values as it always has; read back, it is the same Job."""
    required = {"s3": ["storage.uri=s3://bucket/prefix"], "image_folder": ["dataset.path=/data/images"]}.get(option, [])
    composed = compose_config(f"{group}={option}", *required)
    job = resolve(composed)
    saved = to_mapping(job)
    for section, value in OmegaConf.to_container(composed, resolve=True).items():
        if isinstance(value, dict):  # a group option may leave out keys that have defaults
            assert {key: saved[section][key] for key in value} == value
        else:
            assert saved[section] == value
    assert from_mapping(yaml.safe_load(yaml.safe_dump(saved, sort_keys=False))) == job


def test_a_run_saved_by_an_older_dltrain_resumes_as_a_job_with_this_commands_storage():
    current = resolve(compose_config("storage.uri=/new/runs", "ray.wait_for_workers_s=30"))
    saved = to_mapping(resolve(compose_config("trainer.epochs=3", "storage.uri=/old/runs")))
    del saved["trainer"]["precision"], saved["dataset"]["classes"], saved["ray"], saved["tracking"]  # added since
    job = from_saved(saved, current, resume="20261201-000000-abcdef", rerun=None)
    assert (job.trainer.epochs, job.trainer.precision, job.dataset.classes) == (3, "float32", None)
    assert (job.tracking.mlflow_uri, job.tracking.experiment) == (None, "dltrain")
    assert (job.storage.uri, job.ray.wait_for_workers_s, job.resume) == ("/new/runs", 30, "20261201-000000-abcdef")


def test_a_trial_job_sets_dotted_keys_and_is_checked_as_a_job():
    job = resolve(compose_config("sweep=asha"))
    trial = trial_job(job, {"trainer.learning_rate": 0.01, "model.dropout": 0.3})
    assert (trial.trainer.learning_rate, trial.model.hyperparameters["dropout"]) == (0.01, 0.3)
    assert (trial.sweep, trial.resume, trial.rerun) == (None, None, None) and job.trainer.learning_rate == 0.001
    with pytest.raises(KeyError):
        trial_job(job, {"trainer.learnin_rate": 0.01})
    with pytest.raises(DltrainError, match=r"^trainer.batch_size=101 is not divisible by resources.num_workers=2"):
        trial_job(resolve(compose_config("sweep=asha", "resources.num_workers=2")), {"trainer.batch_size": 101})


def test_the_tuned_experiment_overrides_the_recipe_and_yields_to_the_command_line():
    job = resolve(compose_config("experiment=fashion_tuned"))
    assert to_mapping(job)["model"] == {
        "_target_": "dltrain.models.cnn.build_cnn", "filters": [64, 128, 256], "kernel_size": 3, "padding": "same",
        "dropout": 0.15, "dense_units": 256, "batch_norm": True,
    }  # fmt: skip
    assert (job.dataset.flip, job.dataset.shift) == (True, 2)
    assert job.trainer.learning_rate == 0.002 and job.trainer.lr_schedule == "cosine"
    assert job.trainer.epochs == 30 and job.trainer.optimizer == "adam"
    overridden = resolve(compose_config("experiment=fashion_tuned", "trainer.learning_rate=0.01", "dataset.shift=0"))
    assert (overridden.trainer.learning_rate, overridden.dataset.shift) == (0.01, 0)


def test_local_paths_are_made_absolute_for_the_workers(tmp_path, monkeypatch):
    """Ray runs the workers in folders of its own: the driver resolves local paths against its own directory."""
    monkeypatch.chdir(tmp_path)
    job = resolve(compose_config("dataset.path=data/fashion-mnist", "storage.uri=file://runs"))
    assert (job.dataset.path, job.storage.uri) == (
        str(tmp_path / "data/fashion-mnist"),
        str(tmp_path / "runs"),
    )
    home = resolve(compose_config("dataset.path='~/fashion-mnist'")).dataset.path
    assert home == str(Path.home() / "fashion-mnist")
    remote = resolve(compose_config("storage=s3", "storage.uri=s3://bucket/runs", "dataset.path=s3://bucket/data"))
    assert (remote.dataset.path, remote.storage.uri) == ("s3://bucket/data", "s3://bucket/runs")
    assert resolve(compose_config("storage.uri=gs://bucket/runs")).storage.uri == "gs://bucket/runs"


def test_s3_storage_needs_a_uri():
    with pytest.raises(DltrainError, match=r"^storage.uri is required: set storage.uri=\.\.\.$"):
        resolve(compose_config("storage=s3"))


@pytest.mark.parametrize(("profile", "workers"), [("cpu", 1), ("small", 1), ("medium", 2), ("large", 4)])
def test_resource_profiles(profile, workers):
    resources = resolve(compose_config(f"resources={profile}")).resources
    assert resources.num_workers == workers
    assert resources.use_gpu is (profile != "cpu")


def test_overrides_reach_the_job():
    job = resolve(
        compose_config("resources=large", "resources.use_gpu=false", "trainer.epochs=2", "dataset.limit=4096")
    )
    assert (job.resources.num_workers, job.resources.use_gpu) == (4, False)
    assert (job.trainer.epochs, job.dataset.limit) == (2, 4096)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.epochs=0"], "trainer.epochs=0 is invalid: expected an integer >= 1"),
        (["trainer.learning_rate=-0.1"], "trainer.learning_rate=-0.1 is invalid: expected a number > 0"),
        (["trainer.learning_rate=0"], "trainer.learning_rate=0 is invalid"),
        (["trainer.optimizer=adamax"], "trainer.optimizer='adamax' is invalid: expected one of adam, adamw, sgd"),
        (["trainer.lr_schedule=step"], "trainer.lr_schedule='step' is invalid: expected one of constant, cosine"),
        (["dataset.flip=1"], "dataset.flip=1 is invalid: expected true or false"),
        (["dataset.shift=-2"], "dataset.shift=-2 is invalid: expected an integer >= 0 (pixels)"),
        (["dataset.shift=1.5"], "dataset.shift=1.5 is invalid"),
        (["trainer.batch_size=126", "resources=large"], "trainer.batch_size=126 is not divisible by resources.num_wor"),
        (["+trainer.epochz=3"], "trainer.epochz: unknown key; valid keys: batch_size, callbacks"),
        (["+banana=1"], "config.banana: unknown key"),
        (["+model.width=3"], "model: got an unexpected keyword argument 'width'"),
        (["model._target_=keras.nothing.here"], "model._target_=keras.nothing.here: cannot import it"),
        (["dataset.validation_split=1.5"], "dataset.validation_split=1.5 is invalid: expected a number in [0, 1)"),
        (["dataset.limit=100"], "dataset.limit=100 leaves 90 training samples, fewer than one global batch"),
        (["resources.num_workers=0"], "resources.num_workers=0 is invalid"),
        (["resources.cpus_per_worker=-1"], "resources.cpus_per_worker=-1 is invalid: expected null or a number > 0"),
        (["resources=large", "resources.min_workers=5"], "resources.min_workers=5 exceeds resources.num_workers=4"),
        (["resources=large", "resources.min_workers=0"], "resources.min_workers=0 is invalid: expected null or an"),
        (["resources.local_mode=maybe"], "resources.local_mode='maybe' is invalid: expected auto, true or false"),
        (
            ["resources=medium", "resources.local_mode=true"],
            "resources.local_mode=true trains in the driver's process, one worker: resources.num_workers=2",
        ),
        (["resources.local_mode=true", "sweep=grid"], "resources.local_mode=true cannot be used with a sweep"),
        (
            ["resources=large", "resources.min_workers=2", "trainer.batch_size=128"],
            "trainer.batch_size=128 is not divisible by 3 workers: an elastic run (resources.min_workers=2 to num_wo",
        ),
        (["trainer.progress=sometimes"], "trainer.progress='sometimes' is invalid: expected one of auto, bar, lines,"),
        (["trainer.steps_per_execution=0"], "trainer.steps_per_execution=0 is invalid: expected an integer >= 1"),
        (["trainer.steps_per_execution=2.5"], "trainer.steps_per_execution=2.5 is invalid: expected an integer >= 1"),
        (
            ["trainer.precision=float16"],
            "trainer.precision='float16' is invalid: expected one of float32, mixed_float16, mixed_bfloat16",
        ),
        (["trainer.jit_compile=xla"], "trainer.jit_compile='xla' is invalid: expected auto, true or false"),
        (["trainer.jit_compile=1"], "trainer.jit_compile=1 is invalid: expected auto, true or false"),
        (
            ["resources=medium", "resources.use_gpu=false", "trainer.jit_compile=true"],
            "trainer.jit_compile=true with resources.num_workers=2 CPU workers: XLA compiles the gradient all-reduce",
        ),
        (
            ["framework=jax", "trainer.jit_compile=false"],
            "trainer.jit_compile=false with framework=jax: JAX compiles every step with XLA; use jit_compile=auto",
        ),
        (["ray.wait_for_workers_s=0"], "ray.wait_for_workers_s=0 is invalid: expected a number > 0 (seconds)"),
        (["+trainer.callbacks.x=1"], "trainer.callbacks={'x': 1} is invalid"),
        (
            ["storage=s3", "storage.uri=s3://b/p", "storage.endpoint_url=minio:9000"],
            "storage.endpoint_url='minio:9000'",
        ),
        # Values that passed before issue 27: non-finite numbers, seeds beyond 32 bits, shifts past the image,
        # images of any size, callbacks that are not Keras callbacks, models that are not functions.
        (["trainer.learning_rate=inf"], "trainer.learning_rate=inf is invalid: expected a number > 0"),
        (["trainer.learning_rate=nan"], "trainer.learning_rate=nan is invalid: expected a number > 0"),
        (["storage=s3", "storage.uri=s3://b/p", "storage.retry_seconds=inf"],
         "storage.retry_seconds=inf is invalid: expected a number >= 0 (seconds)"),
        (["ray.wait_for_workers_s=inf"], "ray.wait_for_workers_s=inf is invalid: expected a number > 0 (seconds)"),
        (["trainer.seed=-1"], "trainer.seed=-1 is invalid: expected an integer from 0 to 4294967295 (2**32 - 1)"),
        (["trainer.seed=4294967296"], "trainer.seed=4294967296 is invalid: expected an integer from 0 to 4294967295"),
        (["sweep=grid", "sweep.search.seed=-5"], "sweep.search.seed=-5 is invalid: expected null or an integer from 0"),
        (["dataset.shift=28"], "dataset.shift=28 is invalid: expected an integer from 0 to 27 (pixels: the images are "
                               "28x28)"),
        (["dataset=image_folder", "dataset.path=/x", "dataset.image_size=32", "dataset.shift=40"],
         "dataset.shift=40 is invalid: expected an integer from 0 to 31 (pixels: the images are 32x32)"),
        (["dataset=image_folder", "dataset.path=/x", "dataset.image_size=100000"],
         "dataset.image_size=100000 is invalid: expected an integer from 8 to 1024 (pixels)"),
        (["+trainer.callbacks.x={_target_: keras.callbacks.NoSuchCallback}"],
         "trainer.callbacks.x._target_=keras.callbacks.NoSuchCallback: cannot import it"),
        (["+trainer.callbacks.x={_target_: no_such_module.Callback}"],
         "trainer.callbacks.x._target_=no_such_module.Callback: cannot import it"),
        (["+trainer.callbacks.x={_target_: os.system, command: id}"],
         "trainer.callbacks.x._target_=os.system is not a Keras callback class (a subclass of keras.callbacks.Callb"),
        (["+trainer.callbacks.x={_target_: keras.optimizers.Adam}"],
         "trainer.callbacks.x._target_=keras.optimizers.Adam is not a Keras callback class"),
        (["+trainer.callbacks.x={_target_: keras.callbacks.EarlyStopping, monitor: {_target_: os.getcwd}}"],
         "trainer.callbacks.x.monitor: a callback's arguments are values, not objects to build"),
        (["+trainer.callbacks.x={_target_: keras.callbacks.EarlyStopping, _partial_: true}"],
         "trainer.callbacks.x._partial_: a callback's arguments are values"),
        (["tracking.mlflow_uri=file:///tmp/mlruns"], "tracking.mlflow_uri='file:///tmp/mlruns' is invalid: "
                                                     "expected null or an MLflow tracking server's http(s):// URL"),
        (["tracking.mlflow_uri='http://alice:secret@mlflow:5000'"],
         "tracking.mlflow_uri='http://alice:secret@mlflow:5000' is invalid: expected null or an MLflow tracking "
         "server's http(s):// URL, without credentials (MLflow's client reads them from MLFLOW_TRACKING_USERNAME"),
        (["tracking.mlflow_uri=http://"], "tracking.mlflow_uri='http://' is invalid"),
        (["tracking.experiment=''"], "tracking.experiment='' is invalid: expected an MLflow experiment name"),
        (["model._target_=os.path"], "model._target_=os.path is not a function with a signature: name a function"),
        (["model._target_=math.pi"], "model._target_=math.pi is not a function with a signature"),
    ],
)  # fmt: skip
def test_bad_values_name_the_key_and_what_is_allowed(overrides, message):
    with pytest.raises(DltrainError) as raised:
        resolve(compose_config(*overrides))
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_jax_compiles_the_all_reduce_of_cpu_workers_too():
    """What TensorFlow refuses (XLA over two CPU workers) is how JAX always runs: its CPU collectives are gloo's."""
    job = resolve(
        compose_config("framework=jax", "resources=medium", "resources.use_gpu=false", "trainer.jit_compile=true")
    )
    assert (job.framework.name, job.resources.num_workers, job.trainer.jit_compile) == (
        "jax",
        2,
        True,
    )


def test_unknown_group_option_lists_the_choices():
    with pytest.raises(MissingConfigException) as raised:
        compose_config("resources=huge")
    assert {"cpu", "small", "medium", "large"} <= set(raised.value.options)


@pytest.mark.parametrize(
    ("overrides", "environment", "in_driver"),
    [
        ([], {}, True),  # the default command: one CPU worker, no cluster
        (["resources=small", "resources.use_gpu=false"], {}, True),
        (["resources=small"], {}, False),  # a GPU worker
        (["resources=medium", "resources.use_gpu=false"], {}, False),  # several workers
        (["ray.address=127.0.0.1:6379"], {}, False),  # a cluster given
        ([], {"RAY_ADDRESS": "127.0.0.1:6379"}, False),
        (["resources.local_mode=true", "ray.address=127.0.0.1:6379"], {}, True),
        (["resources.local_mode=false"], {}, False),
        (["sweep=grid"], {}, False),  # every trial has its own Ray Train worker
    ],
)
def test_one_cpu_worker_without_a_cluster_trains_in_the_driver(overrides, environment, in_driver, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert trains_in_driver(resolve(compose_config(*overrides))) is in_driver


def test_a_process_already_connected_to_ray_keeps_ray_train_workers(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # a notebook's ray.init(), a test's cluster
    assert trains_in_driver(resolve(compose_config())) is False
