"""`python -m dltrain key=value ...`: compose the config with Hydra, validate it, hand it to the driver."""

import contextlib
import logging
import sys
import tempfile
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dltrain import frameworks
from dltrain.errors import DltrainError
from dltrain.job import StorageConfig
from dltrain.logs import output_to
from dltrain.redaction import Scrubber
from dltrain.references import named_run
from dltrain.stage import temporary_name
from dltrain.storage import open_storage

# An installed wheel carries the configs inside the package; a source checkout keeps them at the top.
_PACKAGED = Path(__file__).parent / "conf"
CONFIG_DIR = str(_PACKAGED if _PACKAGED.is_dir() else Path(__file__).parent.parent / "conf")


def _framework(cfg: DictConfig) -> str | None:
    """The framework the job trains on: the run's own for resume= and rerun=, else the config's."""
    reference = OmegaConf.select(cfg, "resume") or OmegaConf.select(cfg, "rerun")
    if reference:
        with contextlib.suppress(Exception):  # launch.train says in one line what is wrong with the reference
            storage = open_storage(StorageConfig(**OmegaConf.to_container(cfg.storage, resolve=True)))
            return named_run(storage, str(reference)).config()["framework"]["name"]
    return OmegaConf.select(cfg, "framework.name")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    """Train one model as the composed config says."""
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)  # INFO records go to the run's driver log only
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[console])
    # Removed at the end: the run folder has kept it as logs/driver.log (or no run was made).
    driver_log = Path(tempfile.mkstemp(prefix=temporary_name("driver"), suffix=".log")[1])
    try:
        # Keras takes its backend from the job's framework, before anything imports it.
        if (name := _framework(cfg)) in frameworks.FRAMEWORKS:
            frameworks.use_keras_backend(name)
        # TensorFlow's native start-up lines go to the driver log, not the console.
        with output_to(driver_log, fds=(2,)):
            from dltrain import config, launch  # imported after Hydra, so `--help` and `--cfg` stay fast
        launch.train(config.resolve(cfg), driver_log, list(HydraConfig.get().overrides.task))
    except DltrainError as error:
        # Never a secret of the command line's config, nor a URL's credentials, in what is printed.
        print(f"dltrain: error: {Scrubber(OmegaConf.to_container(cfg))(str(error))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        driver_log.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
