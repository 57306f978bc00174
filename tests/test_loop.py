"""DistributedLoop on TensorFlow's steps in this process, as a lone worker runs it (MultiWorkerMirroredStrategy
without TF_CONFIG, no Ray): steps per execution, mixed precision with and without loss scaling, XLA; and one run
through the driver."""

import json
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from dltrain.config import resolve
from dltrain.data.pipeline import Split, eval_batches, train_batches
from dltrain.engine.loop import DistributedLoop
from dltrain.engine.precision import dtype_policy
from dltrain.frameworks.tensorflow import Training, resolve_jit_compile
from dltrain.job import ModelConfig
from dltrain.progress import ProgressSender
from dltrain.worker import build_model, compile_model

from helpers.config import compose_config, resolved

BATCH = 16
STEPS = 40  # per epoch: 32 does not divide it, so K=32 ends each epoch with an execution of 8 steps
EPOCHS = 2
# A small CNN of the reference builder, with dropout (seeded per step) and batch norm (moving statistics).
MODEL = ModelConfig(
    target="dltrain.models.cnn.build_cnn",
    hyperparameters={"filters": [4], "dense_units": 16, "dropout": 0.2, "batch_norm": True},
)
TRAINER = replace(resolved().trainer, optimizer="adam", learning_rate=0.003, lr_schedule="cosine", epochs=EPOCHS)


@pytest.fixture(scope="module")
def data() -> Split:
    """Synthetic images whose class is learnable: the mean brightness of a 4x4 patch picks the label."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, STEPS * BATCH).astype(np.uint8)
    images = rng.integers(0, 64, (STEPS * BATCH, 28, 28, 1)).astype(np.uint8)
    images[:, :4, :4, 0] += (labels * 19)[:, None, None].astype(np.uint8)
    return Split(images, labels)


class _BatchCalls(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.calls.append(("begin", batch))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("end", batch, logs))


def _train(
    data: Split,
    steps_per_execution: int,
    precision: str = "float32",
    jit_compile: bool = False,
    callbacks: list | None = None,
    batches=train_batches,
    model_config: ModelConfig = MODEL,
) -> tuple[keras.Model, list[dict]]:
    """Train `model_config` for EPOCHS as a lone worker builds and trains it in dltrain/frameworks/tensorflow.py."""
    keras.utils.set_random_seed(7)
    training = Training(workers=1, deterministic=False, use_gpu=False)
    with training.scope(), dtype_policy(precision):
        model = build_model(model_config, (28, 28, 1), 10)
        compile_model(model, TRAINER, STEPS)
    loop = DistributedLoop(model, training.steps(model, BATCH, jit_compile), BATCH, steps_per_execution)
    history = loop.fit(
        lambda epoch: batches(data, BATCH, 7, epoch, 1, 0),
        STEPS,
        EPOCHS,
        validation_batches=lambda: eval_batches(Split(data.images[:100], data.labels[:100]), BATCH, 1, 0),
        callbacks=callbacks,
    )
    return model, history


@pytest.fixture(scope="module")
def one_step_each(data) -> tuple[keras.Model, list[dict]]:
    return _train(data, 1)


def _assert_same_training(one: tuple[keras.Model, list[dict]], other: tuple[keras.Model, list[dict]]) -> None:
    for mine, theirs in zip(one[0].get_weights(), other[0].get_weights(), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)
    for mine, theirs in zip(one[1], other[1], strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5)
    assert int(one[0].optimizer.iterations.numpy()) == int(other[0].optimizer.iterations.numpy()) == STEPS * EPOCHS


@pytest.mark.parametrize("steps_per_execution", [32, 7])
def test_steps_per_execution_trains_exactly_as_one_step_per_call(data, one_step_each, steps_per_execution):
    """K=32 (40 steps: executions of 32 and 8) and K=7 (five of 7, one of 5) take the very same steps."""
    trained = _train(data, steps_per_execution)
    _assert_same_training(one_step_each, trained)
    assert {"seconds", "samples_per_second"} <= set(trained[1][0])
    assert one_step_each[1][1]["loss"] < one_step_each[1][0]["loss"]  # it learns


def test_batch_callbacks_see_every_kth_step_as_in_keras(data):
    calls = _BatchCalls()
    _, history = _train(data, 32, callbacks=[calls])
    epoch = [("begin", 0), ("end", 31), ("begin", 32), ("end", 39)]
    assert [call[:2] for call in calls.calls] == epoch * EPOCHS
    # The logs at an execution's end are the running loss and accuracy of the epoch so far: at its last, the epoch's.
    last = calls.calls[-1][2]
    assert last == {"loss": pytest.approx(history[-1]["loss"]), "accuracy": pytest.approx(history[-1]["accuracy"])}


def test_progress_rates_count_from_the_first_execution():
    """With K=10 the sender's first batch end is at step 10: rates count the steps after it, at 1 s per 10."""
    clock, sent = [100.0], []
    sender = ProgressSender(sent.append, epochs=1, steps=100, global_batch_size=128, clock=lambda: clock[0])
    sender.on_epoch_begin(0)
    for last in range(9, 100, 10):
        clock[0] += 1.0 + (20 if last == 9 else 0)  # the first execution also traces the step
        sender.on_train_batch_end(last)
    assert [message["step"] for message in sent] == [20, 30, 40, 50, 60, 70, 80, 90]  # not 10, nor the last
    assert sent[0]["samples_per_second"] == pytest.approx(128 * 10 / 1.0)
    assert sent[0]["eta_seconds"] == pytest.approx(80 * 0.1)


def test_mixed_bfloat16_computes_in_bfloat16_and_learns(data, one_step_each):
    model, history = _train(data, 8, precision="mixed_bfloat16")
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    assert model.get_layer("conv1").compute_dtype == "bfloat16" and model.get_layer("conv1").kernel.dtype == "float32"
    assert model.get_layer("class_probabilities").compute_dtype == "float32"  # the softmax stays float32
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)  # bfloat16 needs no loss scaling
    assert all(np.isfinite(row[key]) for row in history for key in ("loss", "val_loss"))
    assert history[1]["loss"] < history[0]["loss"]
    # 8 bits of mantissa: close to float32's training, not equal.
    assert history[1]["loss"] == pytest.approx(one_step_each[1][1]["loss"], rel=0.05)


def _overflow_at_step_5(data: Split, batch_size: int, seed: int, epoch: int, workers: int, rank: int):
    """train_batches, with the 6th batch of epoch 0 far beyond float16's range (65,504): its loss is inf."""
    batches = train_batches(data, batch_size, seed, epoch, workers, rank)
    if epoch > 0:
        return batches
    return ((images * 1e6 if step == 5 else images, labels) for step, (images, labels) in enumerate(batches))


@pytest.fixture(scope="module")
def float16_run(data) -> tuple[keras.Model, list[dict]]:
    return _train(data, 8, precision="mixed_float16")


def _scale_and_steps(model: keras.Model) -> tuple[float, int]:
    return float(model.optimizer.dynamic_scale.numpy()), int(model.optimizer.iterations.numpy())


def test_mixed_float16_scales_the_loss_and_learns(float16_run):
    model, history = float16_run
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.get_layer("conv1").compute_dtype == "float16"
    assert model.get_layer("class_probabilities").compute_dtype == "float32"
    # Scaled by 2^15 at first; a step whose scaled gradients overflow is skipped, and the scale halved.
    scale, steps = _scale_and_steps(model)
    assert float(model.optimizer.scale_loss(1.0)) == scale and scale <= 2.0**15
    assert steps == STEPS * EPOCHS - round(np.log2(2.0**15 / scale))  # a skipped step for each halving
    assert all(np.isfinite(row[key]) for row in history for key in ("loss", "val_loss"))
    assert history[1]["loss"] < history[0]["loss"]


def test_mixed_float16_skips_a_step_that_overflows(data):
    # Without batch norm, whose moving statistics the overflowing batch's forward pass would make infinite.
    without_batch_norm = replace(MODEL, hyperparameters=MODEL.hyperparameters | {"batch_norm": False})
    clean, clean_history = _train(data, 8, precision="mixed_float16", model_config=without_batch_norm)
    model, history = _train(data, 8, "mixed_float16", batches=_overflow_at_step_5, model_config=without_batch_norm)
    scale, steps = _scale_and_steps(clean)
    assert _scale_and_steps(model) == (scale / 2, steps - 1)  # one step more skipped, and one more halving
    assert all(np.isfinite(weight).all() for weight in model.get_weights())
    assert history[1]["loss"] == pytest.approx(clean_history[1]["loss"], rel=0.02)  # one step fewer, that is all


def test_a_mixed_float16_checkpoint_loads_into_a_new_model_and_training_continues(float16_run, data, tmp_path):
    """As _restore loads a checkpoint: a model built under the policy, its optimizer built, then load_weights."""
    model, _ = float16_run
    model.save(tmp_path / "model.keras")
    training = Training(workers=1, deterministic=False, use_gpu=False)
    with training.scope(), dtype_policy("mixed_float16"):
        restored = build_model(MODEL, (28, 28, 1), 10)
        compile_model(restored, TRAINER, STEPS)
        restored.optimizer.build(restored.trainable_variables)
        restored.load_weights(tmp_path / "model.keras")
    for mine, theirs in zip(model.get_weights(), restored.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert [v.numpy().tolist() for v in restored.optimizer.variables] == [
        v.numpy().tolist() for v in model.optimizer.variables
    ]  # the loss scale, its step counter, the step count and Adam's moments
    loop = DistributedLoop(restored, training.steps(restored, BATCH, False), BATCH, 8)
    history = loop.fit(lambda epoch: train_batches(data, BATCH, 7, epoch, 1, 0), STEPS, EPOCHS + 1, EPOCHS)
    assert len(history) == 1 and np.isfinite(history[0]["loss"])
    assert _scale_and_steps(restored) == (_scale_and_steps(model)[0], _scale_and_steps(model)[1] + STEPS)


def test_jit_compile_trains_on_cpu_as_without_xla(data):
    """Without dropout, whose masks XLA draws with its own random number generator, the runs agree up to the
    rounding of XLA's fused and reordered float operations."""
    without_dropout = replace(MODEL, hyperparameters=MODEL.hyperparameters | {"dropout": 0.0})
    (plain, plain_history) = _train(data, 8, model_config=without_dropout)
    (compiled, history) = _train(data, 8, jit_compile=True, model_config=without_dropout)
    for mine, theirs in zip(plain.get_weights(), compiled.get_weights(), strict=True):
        np.testing.assert_allclose(mine, theirs, atol=1e-4)
    for mine, theirs in zip(plain_history, history, strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4)
    assert history[1]["loss"] < history[0]["loss"]


@pytest.mark.parametrize(
    ("setting", "use_gpu", "deterministic", "expected"),
    [("auto", True, False, True), ("auto", False, False, False), ("auto", True, True, False),
     (True, False, False, True), (False, True, False, False)],
)  # fmt: skip
def test_jit_compile_auto_is_xla_on_gpu_workers_only(setting, use_gpu, deterministic, expected):
    assert resolve_jit_compile(setting, use_gpu, deterministic) is expected


def test_the_global_dtype_policy_is_restored_after_an_error():
    with pytest.raises(RuntimeError), dtype_policy("mixed_bfloat16"):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        raise RuntimeError("building failed")
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.slow
def test_a_mixed_bfloat16_xla_run_fails_and_restarts_from_its_checkpoint(real_data, tmp_path):
    """Through the driver, in this process (resources.local_mode=true): the run fails in epoch 2 and restarts from
    epoch 1's checkpoint under the saved precision and XLA settings, as `resume=` would restore it."""
    from dltrain.job import StorageConfig
    from dltrain.launch import train
    from dltrain.runs import RunStore
    from dltrain.storage import open_storage

    runs, marker = tmp_path / "runs", tmp_path / "failed"
    fail = f"+trainer.callbacks.fail={{_target_: helpers.callbacks.FailOnce, marker: '{marker}', epoch: 1, batch: 0}}"
    job = resolve(
        compose_config(
            f"dataset.path={real_data}", f"storage.uri={runs}", "dataset.limit=1280", "trainer.batch_size=64",
            "trainer.epochs=2", "trainer.max_failures=1", "trainer.precision=mixed_bfloat16",
            "trainer.jit_compile=true", "resources.local_mode=true", fail,
        )
    )  # fmt: skip
    summary = train(job)
    assert marker.exists()  # it did fail
    (run_id,) = [path.name for path in runs.iterdir()]
    run = RunStore(open_storage(StorageConfig(uri=str(runs)))).get(run_id)
    assert (summary["status"], summary["epochs"]) == ("COMPLETED", 2)
    rows = run.metrics()
    assert [row["epoch"] for row in rows] == [1, 2] and all(np.isfinite(row["loss"]) for row in rows)
    (restarted,) = (Path(run.path) / "logs").glob("worker-0-*-restart1.log")
    assert "starting at epoch 2" in restarted.read_text()  # the restart restored epoch 1's checkpoint
    saved = run.config()["trainer"]
    assert (saved["precision"], saved["jit_compile"]) == ("mixed_bfloat16", True)
    model = keras.models.load_model(Path(run.path) / "model" / "model.keras")
    assert model.get_layer("conv1").compute_dtype == "bfloat16"
    assert int(model.optimizer.iterations.numpy()) == 2 * 18  # 1152 training samples / 64: the count continued
    assert json.loads((Path(run.path) / "model" / "test_metrics.json").read_text())["test_accuracy"] > 0.3
