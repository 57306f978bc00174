"""Training a composed config in this process, for `python -m dltrain` and the Python API (`dltrain.train`) alike:
Keras' backend chosen from the job before anything imports Keras, TensorFlow's start-up lines kept in the driver
log, the driver's log records at INFO, and every error in one line with the config's secrets scrubbed."""

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from dltrain import frameworks
from dltrain.errors import DltrainError
from dltrain.job import Job, StorageConfig
from dltrain.logs import output_to
from dltrain.redaction import Scrubber
from dltrain.references import named_run
from dltrain.stage import temporary_name
from dltrain.storage import open_storage

# An installed wheel carries the configs inside the package; a source checkout keeps them at the top.
_PACKAGED = Path(__file__).parent / "conf"
CONFIG_DIR = str(_PACKAGED if _PACKAGED.is_dir() else Path(__file__).parent.parent / "conf")


def compose(overrides: list[str]) -> DictConfig:
    """The config `python -m dltrain *overrides` composes, through Hydra's compose API (Hydra's own errors)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def framework_of(cfg: DictConfig) -> str | None:
    """The framework the job trains on: the run's own for resume= and rerun=, else the config's."""
    reference = OmegaConf.select(cfg, "resume") or OmegaConf.select(cfg, "rerun")
    if reference:
        from dltrain.config import saved_overview  # here: `--help` and `--cfg` stay fast

        with contextlib.suppress(Exception):  # launch.train says in one line what is wrong with the reference
            storage = open_storage(StorageConfig(**OmegaConf.to_container(cfg.storage, resolve=True)))
            return saved_overview(named_run(storage, str(reference)).config()).framework
    return OmegaConf.select(cfg, "framework.name")


@contextlib.contextmanager
def _records_at_info() -> Iterator[None]:
    """Log records at INFO and above reach the handlers (the run's driver log) in the block: the root logger's
    level is lowered to INFO where it is higher (Python's default, WARNING), and restored after."""
    root = logging.getLogger()
    level = root.level
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.setLevel(level)


def train(cfg: DictConfig, overrides: list[str]) -> tuple[Job, dict]:
    """Train (or sweep, resume, rerun) as the composed `cfg` says, its provenance recording the command line's
    `overrides`; returns the job and its summary (launch.train). DltrainError in one line, with the secrets of
    `cfg` scrubbed, where it cannot; Ctrl-C stops the run (KeyboardInterrupt)."""
    # Removed at the end: the run folder has kept it as logs/driver.log (or no run was made).
    driver_log = Path(tempfile.mkstemp(prefix=temporary_name("driver"), suffix=".log")[1])
    try:
        # Keras takes its backend from the job's framework, before anything imports it.
        if (name := framework_of(cfg)) in frameworks.FRAMEWORKS:
            frameworks.use_keras_backend(name)
        # Imported here, so that `--help` and `--cfg` stay fast; the config is checked before launch imports Keras,
        # so that a mistake in it is told in a second. TensorFlow's native start-up lines (where the model's check
        # imports Keras) go to the driver log, not the console.
        with output_to(driver_log, fds=(2,)):
            from dltrain import config

            job = config.resolve(cfg)
            from dltrain import launch
        with _records_at_info():
            return job, launch.train(job, driver_log, overrides)
    except DltrainError as error:
        # Never a secret of the command line's config, nor a URL's credentials, in what is shown.
        raise DltrainError(Scrubber(OmegaConf.to_container(cfg))(str(error))) from None
    finally:
        driver_log.unlink(missing_ok=True)
