"""`python -m dltrain key=value ...`: compose the config with Hydra, and train it in this process (driver.py)."""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dltrain import driver
from dltrain.driver import CONFIG_DIR
from dltrain.errors import DltrainError


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    """Train one model as the composed config says."""
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)  # INFO records go to the run's driver log only
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[console])
    try:
        driver.train(cfg, list(HydraConfig.get().overrides.task))
    except DltrainError as error:  # in one line, the config's secrets scrubbed
        print(f"dltrain: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
