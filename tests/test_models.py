"""The reference CNN builder."""

import keras
import numpy as np
import pytest

from dltrain.models.cnn import build_cnn


def test_reference_cnn_layers_and_shapes():
    model = build_cnn((28, 28, 1), 10)
    conv = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [layer.filters for layer in conv] == [32, 64, 128]
    assert all(layer.kernel_size == (3, 3) and layer.activation.__name__ == "relu" for layer in conv)
    assert all(isinstance(layer.kernel_initializer, keras.initializers.HeNormal) for layer in conv)
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == [0.4] * 4
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [128, 10]
    probabilities = model(np.zeros((3, 28, 28, 1), np.float32))
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(np.sum(probabilities, axis=1), 1.0, rtol=1e-5)


def test_batch_norm_blocks_are_bias_free_conv_then_batch_norm_then_relu():
    model = build_cnn((28, 28, 1), 10, batch_norm=True)
    names = [layer.name for layer in model.layers]
    for block in ("1", "2", "3", "_dense"):
        layer = "dense" if block == "_dense" else f"conv{block}"
        assert names[names.index(layer) + 1 : names.index(layer) + 3] == [f"batch_norm{block}", f"relu{block}"]
        assert model.get_layer(layer).use_bias is False and model.get_layer(layer).activation.__name__ == "linear"
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 4 and all(layer.synchronized for layer in norms)
    # Training updates the moving statistics; inference uses them, so it no longer matches a fresh model.
    images = np.random.default_rng(0).random((16, 28, 28, 1)).astype(np.float32)
    before = model(images, training=False).numpy()
    model(images, training=True)
    assert not np.allclose(norms[0].moving_mean.numpy(), 0.0)
    assert not np.allclose(model(images, training=False).numpy(), before)


def test_the_default_model_has_no_batch_norm():
    model = build_cnn((28, 28, 1), 10)
    assert not [
        layer for layer in model.layers if isinstance(layer, (keras.layers.BatchNormalization, keras.layers.ReLU))
    ]
    assert all(layer.use_bias for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)))


def test_hyperparameters_change_the_architecture():
    model = build_cnn((32, 32, 3), 5, filters=[8, 16], dropout=0.1, dense_units=32, padding="same")
    assert model.output_shape == (None, 5)
    assert [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)] == [8, 16]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"filters": []}, "filters"),
        ({"dropout": 1.0}, "dropout"),
        ({"batch_norm": 1}, "batch_norm must be true or false"),
    ],
)
def test_bad_hyperparameters_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_cnn((28, 28, 1), 10, **kwargs)


def test_keras_checkpoint_restores_weights_and_optimizer_state(tmp_path):
    """dltrain's checkpoints are .keras files loaded with load_weights into a freshly built, compiled model."""
    trained = build_cnn((28, 28, 1), 10, filters=[4])
    trained.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    trained.fit(rng.random((64, 28, 28, 1)), rng.integers(0, 10, 64), epochs=2, verbose=0)
    trained.save(tmp_path / "model.keras")
    fresh = build_cnn((28, 28, 1), 10, filters=[4])
    fresh.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(tmp_path / "model.keras")
    assert int(fresh.optimizer.iterations) == int(trained.optimizer.iterations) == 4
    for restored, saved in zip(
        fresh.weights + fresh.optimizer.variables, trained.weights + trained.optimizer.variables, strict=True
    ):
        np.testing.assert_array_equal(restored.numpy(), saved.numpy())
