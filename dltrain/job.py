"""The typed job: the frozen dataclasses that `config.resolve` returns, one per section of the config.

config.py builds them only once its own checks have passed (with their one-line messages), so every field holds a
value those checks allow; conf/ and README.md document each key. A field with a default is a key that a config
group option may leave out (storage=local has no S3 settings) or that configs saved by older versions lack:
config.py fills it in. Field order is the key order of the config.yaml a run saves (config.to_mapping).

Frozen: no field is reassigned; a changed job is a new one (dataclasses.replace, or config.trial_job for a
sweep's trial). Nothing here imports Ray, Hydra or TensorFlow, so data and model code may take these types.
"""

from dataclasses import dataclass
from typing import Any

DEFAULT_RETRY_SECONDS = 60  # storage.retry_seconds: how long an S3 outage is ridden out
# ray.wait_for_workers_s: how long a run waits for its workers to be placed before it fails; an autoscaler's new
# GPU node takes minutes.
DEFAULT_WAIT_FOR_WORKERS_S = 600


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """`model`: the builder `_target_` names, and the keyword arguments it is called with: an open mapping, which
    config.py checks against the builder's signature."""

    target: str
    hyperparameters: dict[str, Any]

    @property
    def short_name(self) -> str:
        """`cnn` for the builder dltrain.models.cnn.build_cnn (its name without build_), with the model's own
        `name` where it has one: `backbone mobilenet_v2`."""
        builder = self.target.rsplit(".", 1)[-1].removeprefix("build_")
        name = self.hyperparameters.get("name")
        return f"{builder} {name}" if isinstance(name, str) else builder


@dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    """`trainer`: how the model is trained."""

    epochs: int
    batch_size: int  # the global batch, split evenly over the workers
    learning_rate: float
    lr_schedule: str  # constant or cosine
    optimizer: str
    seed: int
    deterministic: bool
    max_failures: int
    keep_checkpoints: int
    progress: str  # auto, bar, lines, epochs or none
    callbacks: dict[str, dict[str, Any]]  # name -> {_target_: a Keras callback class, ...its arguments}
    steps_per_execution: int
    precision: str  # a Keras dtype policy
    jit_compile: bool | str  # true, false or "auto"


@dataclass(frozen=True, kw_only=True)
class ResourcesConfig:
    """`resources`: the workers a run takes."""

    min_workers: int | None = None  # None: always num_workers; N: elastic, N to num_workers workers
    local_mode: bool | str = "auto"  # True, False or "auto"
    num_workers: int
    use_gpu: bool
    cpus_per_worker: float | None  # None: a share of the cluster's CPUs

    @property
    def worker_range(self) -> tuple[int, int]:
        """(fewest, most) workers of a run: (num_workers, num_workers) unless it is elastic (min_workers)."""
        return self.min_workers or self.num_workers, self.num_workers


@dataclass(frozen=True, kw_only=True)
class FashionMnistConfig:
    """`dataset` with name fashion_mnist."""

    classes: list[int] | None = None  # None: all ten
    per_class: int | None = None  # None: every training image of each class
    name: str
    path: str | None  # None: $DLTRAIN_DATA_DIR, else dltrain's cache
    mirror: str
    limit: int | None
    validation_split: float
    flip: bool
    shift: int


@dataclass(frozen=True, kw_only=True)
class ImageFolderConfig:
    """`dataset` with name image_folder: the user's images, as a folder (or shards) or a manifest."""

    name: str
    path: str | None
    manifest: str | None
    allow_outside_paths: bool = False  # a manifest's files may lie outside its folder; configs saved before lack it
    label: str
    min_per_class: int
    image_size: int
    channels: int
    validation_split: float
    test_split: float | None  # None: a split column, else 0.1
    shuffle_buffer: int
    flip: bool
    shift: int


DatasetConfig = FashionMnistConfig | ImageFolderConfig


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    """`storage`: where runs are kept, a local folder or an S3 prefix, and how S3 is reached."""

    endpoint_url: str | None = None  # None: AWS itself
    region: str | None = None  # None: $AWS_REGION, else us-east-1
    create_bucket: bool = False
    retry_seconds: float = DEFAULT_RETRY_SECONDS
    uri: str | None  # None: $DLTRAIN_STORAGE, else ~/dltrain_results


@dataclass(frozen=True, kw_only=True)
class FrameworkConfig:
    """`framework`: the Keras backend and its Ray trainer."""

    name: str


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """`ray`: the cluster, and how long a run waits for its workers."""

    wait_for_workers_s: float = DEFAULT_WAIT_FOR_WORKERS_S
    address: str | None  # None: $RAY_ADDRESS, else an embedded local Ray


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """`tracking`: where runs are mirrored beside their folders (dltrain/tracking.py)."""

    mlflow_uri: str | None = None  # None: no mirroring; else an MLflow tracking server's http(s):// URL
    experiment: str = "dltrain"  # the MLflow experiment the runs go into


@dataclass(frozen=True, kw_only=True)
class AshaConfig:
    """`sweep.scheduler` with name asha: successive halving."""

    name: str
    grace_period: int
    reduction_factor: float


@dataclass(frozen=True, kw_only=True)
class MedianConfig:
    """`sweep.scheduler` with name median: the median stopping rule."""

    name: str
    grace_period: int
    min_samples_required: int


@dataclass(frozen=True, kw_only=True)
class FifoConfig:
    """`sweep.scheduler` with name fifo: no early stopping."""

    name: str


SchedulerConfig = AshaConfig | MedianConfig | FifoConfig


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """`sweep.search`: how trial values are chosen."""

    algorithm: str  # random, grid or bayes
    seed: int | None


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """`sweep`: the trials of a hyperparameter sweep."""

    num_samples: int
    metric: str
    mode: str  # max or min
    max_concurrent_trials: int
    scheduler: SchedulerConfig
    search: SearchConfig
    space: dict[str, Any]  # nested config keys -> search expressions (search_space.py)


@dataclass(frozen=True, kw_only=True)
class Job:
    """A whole resolved config: what one run, or one sweep, trains."""

    model: ModelConfig
    dataset: DatasetConfig
    resources: ResourcesConfig
    storage: StorageConfig
    framework: FrameworkConfig
    sweep: SweepConfig | None = None  # None: one run (the sweep group is chosen only for sweeps)
    trainer: TrainerConfig
    resume: str | None  # a run or sweep id to continue
    rerun: str | None  # a run or sweep id whose saved config this job repeats
    ray: RayConfig
    tracking: TrackingConfig
