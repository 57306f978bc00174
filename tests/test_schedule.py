"""Learning-rate schedules: their shape, and that a resumed run continues them from its checkpoint."""

from dataclasses import replace

import numpy as np
import pytest

from dltrain.models.cnn import build_cnn
from dltrain.worker import compile_model, learning_rate

from helpers.config import resolved

TRAINER = replace(resolved().trainer, optimizer="adam", learning_rate=0.002, lr_schedule="cosine", epochs=3)


def test_constant_schedule_is_the_learning_rate_itself():
    assert learning_rate(replace(TRAINER, lr_schedule="constant"), steps_per_epoch=10) == 0.002


def test_cosine_starts_at_the_learning_rate_and_decays_to_zero_over_every_epoch():
    schedule = learning_rate(TRAINER, steps_per_epoch=10)
    values = [float(schedule(step)) for step in range(31)]
    assert values[0] == pytest.approx(0.002)
    assert values[15] == pytest.approx(0.001)  # half way through the 3 x 10 steps
    assert values[30] == pytest.approx(0.0, abs=1e-9)
    assert np.all(np.diff(values) < 0)


def test_a_model_restored_from_its_checkpoint_continues_the_schedule(tmp_path):
    """dltrain restores a .keras checkpoint with load_weights: the step counter, hence the schedule, comes back."""
    rng = np.random.default_rng(0)
    images, labels = rng.random((32, 28, 28, 1)), rng.integers(0, 10, 32)
    trained = build_cnn((28, 28, 1), 10, filters=[4], batch_norm=True)
    compile_model(trained, TRAINER, steps_per_epoch=4)
    trained.fit(images, labels, batch_size=8, epochs=2, verbose=0)  # 8 of the 12 steps
    trained.save(tmp_path / "model.keras")
    fresh = build_cnn((28, 28, 1), 10, filters=[4], batch_norm=True)
    compile_model(fresh, TRAINER, steps_per_epoch=4)
    assert float(fresh.optimizer.learning_rate) == pytest.approx(0.002)
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(tmp_path / "model.keras")
    assert int(fresh.optimizer.iterations) == 8
    expected = float(learning_rate(TRAINER, steps_per_epoch=4)(8))
    assert float(fresh.optimizer.learning_rate) == pytest.approx(expected) == pytest.approx(0.0005)
