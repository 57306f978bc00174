"""Training from the `dltrain` command: its arguments handed to the Hydra entry point, as `python -m dltrain`."""

import sys


def train(arguments: list[str]) -> None:
    """Run the Hydra entry point with `arguments` (key=value overrides, Hydra's flags)."""
    from dltrain.__main__ import main as hydra_main  # imported here: Hydra and TensorFlow load only for training

    sys.argv = ["dltrain train", *arguments]
    hydra_main()
