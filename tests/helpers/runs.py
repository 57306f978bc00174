"""What the tests' real runs share: the recipe of the shared two-worker run, and what runs leave behind."""

import os
import tempfile

# The recipe of the shared 2-worker run; test_s3.py trains it again on S3, from S3 data, and gets the same metrics.
TWO_WORKER_RECIPE = ["resources.num_workers=2", "trainer.epochs=2", "dataset.limit=1280", "trainer.batch_size=64",
                     "trainer.deterministic=true"]  # fmt: skip


def temporary_files() -> set[str]:
    """What dltrain, TensorFlow and Ray could leave in the system's temporary folder."""
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith(("dltrain", "__autograph", "ray"))}
