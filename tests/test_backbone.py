"""The keras.applications backbone builder: layout, sizes, preprocessing, freezing and transfer of a backbone."""

import keras
import numpy as np
import pytest

from dltrain.models.backbone import BACKBONES, MIN_SIZES, build_backbone
from dltrain.models.cnn import build_cnn

PREPROCESS_INPUT = {
    "mobilenet_v2": keras.applications.mobilenet_v2.preprocess_input,
    "inception_v3": keras.applications.inception_v3.preprocess_input,
    "resnet50": keras.applications.resnet50.preprocess_input,
    "vgg16": keras.applications.vgg16.preprocess_input,
    "efficientnet_b0": keras.applications.efficientnet.preprocess_input,
}


def train_step(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> float:
    """One Adam step. Eager: tracing the train step of a keras.applications base takes 20-30 s on 2 CPU cores."""
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=True)
    return float(model.train_on_batch(images, labels))


def random_images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


@pytest.fixture(scope="module")
def saved_mobilenet(tmp_path_factory) -> tuple[keras.Model, str]:
    """A 5-class mobilenet_v2 on 32x32 grayscale, saved as a .keras file: the source of the transfer tests."""
    model = build_backbone((32, 32, 1), 5)
    path = str(tmp_path_factory.mktemp("backbone") / "a.keras")
    model.save(path)
    return model, path


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_trains_one_step_on_grayscale_at_its_minimum_size(name):
    size = MIN_SIZES[name]
    model = build_backbone((size, size, 1), 3, name=name)
    assert model.name == f"{name}_classifier"
    assert [layer.name for layer in model.layers] == [
        "image",
        "grayscale_to_rgb",
        "preprocessing",
        "backbone",
        "head_dropout",
        "class_probabilities",
    ]
    assert model.get_layer("backbone").input_shape == (None, size, size, 3)
    assert np.isfinite(train_step(model, random_images((2, size, size, 1)), np.array([0, 2])))
    probabilities = model(random_images((2, size, size, 1), seed=1), training=False)
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(np.sum(probabilities, axis=1), 1.0, rtol=1e-5)


def test_too_small_an_input_names_the_minimum_and_input_size_resizes():
    with pytest.raises(ValueError, match=r"mobilenet_v2 needs images of at least 32x32, got 28x28.*input_size=32"):
        build_backbone((28, 28, 1), 10)
    with pytest.raises(ValueError, match=r"inception_v3 needs images of at least 75x75, got 64x64.*input_size=75"):
        build_backbone((96, 96, 3), 10, name="inception_v3", input_size=64)
    model = build_backbone((28, 28, 1), 10, input_size=32)
    assert model.layers[1].name == "resize" and model.get_layer("backbone").input_shape == (None, 32, 32, 3)
    assert model(random_images((2, 28, 28, 1)), training=False).shape == (2, 10)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_preprocessing_equals_keras_applications_preprocess_input(name):
    """From [0, 1] RGB inside the model, as each base's preprocess_input does from [0, 255] (caffe: BGR, mean)."""
    size = MIN_SIZES[name]
    model = build_backbone((size, size, 3), 2, name=name)
    preprocessing = keras.Model(model.input, model.get_layer("preprocessing").output)
    images = random_images((2, size, size, 3))
    expected = PREPROCESS_INPUT[name](images * 255.0)
    np.testing.assert_allclose(preprocessing(images), expected, atol=1e-3)


def test_frozen_base_keeps_its_weights_and_trains_the_head(saved_mobilenet):
    _, path = saved_mobilenet
    model = build_backbone((32, 32, 1), 4, weights=path, freeze=True)
    base = model.get_layer("backbone")
    assert base.trainable is False and not base.trainable_weights
    assert {variable.path for variable in model.trainable_weights} == {
        "class_probabilities/kernel",
        "class_probabilities/bias",
    }
    base_before = base.get_weights()  # the moving statistics too: the frozen base runs in inference mode
    head_before = model.get_layer("class_probabilities").get_weights()
    train_step(model, random_images((2, 32, 32, 1)), np.array([0, 3]))
    assert all(np.array_equal(a, b) for a, b in zip(base_before, base.get_weights(), strict=True))
    # Exact comparisons: an untrained base's inference-mode features are ~1e-12, so the kernel barely moves.
    head_after = model.get_layer("class_probabilities").get_weights()
    assert all(not np.array_equal(a, b) for a, b in zip(head_before, head_after, strict=True))


def test_freeze_n_leaves_the_last_n_base_layers_trainable(saved_mobilenet):
    _, path = saved_mobilenet
    base = build_backbone((32, 32, 1), 4, weights=path, freeze=7).get_layer("backbone")
    assert [layer.trainable for layer in base.layers] == [False] * (len(base.layers) - 7) + [True] * 7
    with pytest.raises(ValueError, match=f"freeze=10000 exceeds the {len(base.layers)} layers"):
        build_backbone((32, 32, 1), 4, weights=path, freeze=10_000)


def test_keras_weights_transfer_the_backbone_to_a_new_head(saved_mobilenet, tmp_path):
    source, path = saved_mobilenet
    model = build_backbone((32, 32, 1), 7, weights=path, head={"dropout": 0.5, "dense_units": 16})
    source_weights = source.get_layer("backbone").get_weights()
    for copied, original in zip(model.get_layer("backbone").get_weights(), source_weights, strict=True):
        np.testing.assert_array_equal(copied, original)
    assert model.get_layer("class_probabilities").kernel.shape == (16, 7)
    assert source.get_layer("class_probabilities").kernel.shape == (1280, 5)
    assert model.get_layer("head_dense").units == 16 and model.get_layer("head_dropout").rate == 0.5
    # Convolutions and pooling have the same weights at any image size: a 32x32 backbone fine-tunes at 48x48 RGB.
    larger = build_backbone((48, 48, 3), 2, weights=path).get_layer("backbone").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(larger, source_weights, strict=True))

    build_backbone((32, 32, 1), 5, name="vgg16").save(tmp_path / "vgg16.keras")
    with pytest.raises(ValueError, match=r"vgg16_classifier does not fit model.name=mobilenet_v2: 26 weight arrays"):
        build_backbone((32, 32, 1), 5, weights=str(tmp_path / "vgg16.keras"))
    build_cnn((28, 28, 1), 10, filters=[4]).save(tmp_path / "cnn.keras")
    with pytest.raises(ValueError, match="no layer named 'backbone'"):
        build_backbone((32, 32, 1), 5, weights=str(tmp_path / "cnn.keras"))


def test_a_fine_tune_takes_the_head_too_only_when_asked(saved_mobilenet):
    source, path = saved_mobilenet
    new_head = build_backbone((32, 32, 1), 5, weights=path).get_layer("class_probabilities").get_weights()
    assert not np.array_equal(new_head[0], source.get_layer("class_probabilities").get_weights()[0])
    kept = build_backbone((32, 32, 1), 5, weights=path, head={"from_weights": True})
    for copied, original in zip(kept.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(copied, original)
    with pytest.raises(ValueError, match=r"class_probabilities weights of .* are \[\(1280, 5\), \(5,\)\], this model's "
                       r"\[\(1280, 7\), \(7,\)\]"):  # fmt: skip
        build_backbone((32, 32, 1), 7, weights=path, head={"from_weights": True})
    with pytest.raises(ValueError, match=r"head.from_weights=true needs weights=run:RUN_ID"):
        build_backbone((32, 32, 1), 5, head={"from_weights": True})


def test_saved_model_loads_in_safe_mode_with_the_same_predictions(saved_mobilenet):
    model, path = saved_mobilenet
    loaded = keras.saving.load_model(path)  # safe_mode=True: no Lambda or custom layers
    images = random_images((4, 32, 32, 1))
    np.testing.assert_allclose(loaded(images, training=False), model(images, training=False), atol=1e-6)


def test_weights_file_gives_the_base_its_weights(saved_mobilenet, tmp_path):
    """A .weights.h5 file goes to keras.applications' weights= argument, as its ..._notop.h5 files do."""
    source, _ = saved_mobilenet
    source.get_layer("backbone").save_weights(tmp_path / "mobilenet_v2.weights.h5")
    model = build_backbone((32, 32, 3), 2, weights=str(tmp_path / "mobilenet_v2.weights.h5"), freeze=True)
    for loaded, original in zip(
        model.get_layer("backbone").get_weights(), source.get_layer("backbone").get_weights(), strict=True
    ):
        np.testing.assert_array_equal(loaded, original)


def test_imagenet_weights_offline_fail_in_one_line():
    """This machine has no internet: the download fails at once, in one line that says what to do."""
    try:
        model = build_backbone((96, 96, 1), 3, weights="imagenet")
    except ValueError as error:
        message = str(error)
        assert "\n" not in message
        assert "ImageNet weights of mobilenet_v2 could not be downloaded" in message and "internet" in message
    else:
        assert model.get_layer("backbone").input_shape == (None, 96, 96, 3)
        pytest.skip("the ImageNet weights downloaded (or were cached): this machine is online")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "resnet18"}, "name must be one of mobilenet_v2, inception_v3, resnet50, vgg16, efficientnet_b0"),
        ({"input_shape": (32, 32, 2)}, "1 or 3 channels"),
        ({"input_size": 0}, "input_size must be"),
        ({"head": {"dropout": 1.0}}, r"head.dropout must be a number in \[0, 1\)"),
        ({"head": {"dense_units": -1}}, "head.dense_units must be an integer >= 0"),
        ({"head": {"units": 8}}, r"unknown keys \['units'\]; valid: dropout, dense_units, from_weights"),
        ({"freeze": True}, "freeze=True with weights=none would freeze a random base"),
        ({"freeze": "yes"}, "freeze must be true, false or a number"),
        ({"freeze": -1}, "freeze must be true, false or a number"),
        ({"weights": "random"}, "weights must be one of none, imagenet, run:RUN_ID, model:NAME@alias"),
        ({"weights": "/no/such/model.keras"}, "weights file not found: /no/such/model.keras"),
        ({"weights": "run:abc123"}, "reference that dltrain resolves"),
    ],
)
def test_bad_arguments_raise_one_line_value_errors(kwargs, message):
    arguments = {"input_shape": (32, 32, 1), "num_classes": 3, **kwargs}
    with pytest.raises(ValueError, match=message) as error:
        build_backbone(**arguments)
    assert "\n" not in str(error.value)
