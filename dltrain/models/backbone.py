"""Classifiers on a keras.applications backbone: preprocessing layers, the base as one layer, a small softmax head.

The base is one nested layer named "backbone", so that its weights can move between models of different heads:
a previous run's final .keras model gives its backbone to a new classifier (transfer learning, see `weights`).
"""

import os
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import keras
import numpy as np


class Backbone(NamedTuple):
    """A keras.applications base: its constructor, its minimum image height and width, its input preprocessing."""

    constructor: Callable[..., keras.Model]
    min_size: int
    # "tf": pixels in [-1, 1]; "caffe": [0, 255] BGR minus the ImageNet mean; "raw": [0, 255], normalized inside.
    preprocessing: str


BACKBONES: dict[str, Backbone] = {
    "mobilenet_v2": Backbone(keras.applications.MobileNetV2, 32, "tf"),
    "inception_v3": Backbone(keras.applications.InceptionV3, 75, "tf"),
    "resnet50": Backbone(keras.applications.ResNet50, 32, "caffe"),
    "vgg16": Backbone(keras.applications.VGG16, 32, "caffe"),
    "efficientnet_b0": Backbone(keras.applications.EfficientNetB0, 32, "raw"),
}
MIN_SIZES: dict[str, int] = {name: backbone.min_size for name, backbone in BACKBONES.items()}
HEAD_DEFAULTS: dict[str, float | int | bool] = {"dropout": 0.2, "dense_units": 0, "from_weights": False}
HEAD_LAYERS = ("head_dense", "class_probabilities")  # the head's layers with weights
WEIGHTS_FORMS = "none, imagenet, run:RUN_ID, model:NAME@alias, a .keras path or a .weights.h5 (or ..._notop.h5) path"
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)  # keras.applications.imagenet_utils, "caffe" mode


def _one_line(error: BaseException, first_line_only: bool = False, limit: int = 300) -> str:
    """An exception's message on one line (its first line, or all its lines joined), cut to `limit` characters."""
    text = str(error).strip() or type(error).__name__
    text = text.splitlines()[0] if first_line_only else " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_head(head: Mapping | None) -> tuple[float, int, bool]:
    """The head's (dropout, dense_units, from_weights), defaults filled in, validated."""
    if head is None:
        head = {}
    if not isinstance(head, Mapping):
        raise ValueError(f"head must be a mapping like {{dropout: 0.2, dense_units: 0}}, got {head!r}")
    unknown = sorted(str(key) for key in head if key not in HEAD_DEFAULTS)
    if unknown:
        raise ValueError(f"head has unknown keys {unknown}; valid: {', '.join(HEAD_DEFAULTS)}")
    dropout = head.get("dropout", HEAD_DEFAULTS["dropout"])
    dense_units = head.get("dense_units", HEAD_DEFAULTS["dense_units"])
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"head.dropout must be a number in [0, 1), got {dropout!r}")
    if isinstance(dense_units, bool) or not isinstance(dense_units, int) or dense_units < 0:
        raise ValueError(f"head.dense_units must be an integer >= 0 (0: no hidden dense layer), got {dense_units!r}")
    from_weights = head.get("from_weights", HEAD_DEFAULTS["from_weights"])
    if not isinstance(from_weights, bool):
        raise ValueError(f"head.from_weights must be true or false, got {from_weights!r}")
    return float(dropout), dense_units, from_weights


def _check_weights(weights: str | os.PathLike | None) -> tuple[str, str | None]:
    """The kind of `weights` and its file: "none", "imagenet", "keras" (a model this builder made) or "h5" (a
    keras.applications no-top weights file)."""
    if weights is None or weights == "none":
        return "none", None
    if weights == "imagenet":
        return "imagenet", None
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"weights must be one of {WEIGHTS_FORMS}, got {weights!r}")
    path = os.fspath(weights)
    if path.startswith(("run:", "model:")):
        raise ValueError(f"weights={path} is a reference that dltrain resolves to a .keras file before building")
    if path.endswith(".keras"):
        kind = "keras"
    elif path.endswith(".h5"):  # .weights.h5 (Keras 3) or keras.applications' legacy ..._notop.h5
        kind = "h5"
    else:
        raise ValueError(f"weights must be one of {WEIGHTS_FORMS}, got {path!r}")
    if not os.path.isfile(path):
        raise ValueError(f"weights file not found: {path}")
    return kind, path


def _check_freeze(freeze: bool | int, weights_kind: str) -> None:
    """`freeze` is a bool or an integer >= 0, and only freezes a base with trained weights."""
    if not isinstance(freeze, int) or (not isinstance(freeze, bool) and freeze < 0):
        raise ValueError(f"freeze must be true, false or a number of trainable base layers >= 0, got {freeze!r}")
    if weights_kind == "none" and freeze is not False:
        raise ValueError(
            f"freeze={freeze} with weights=none would freeze a random base; "
            "give trained weights, e.g. weights=run:RUN_ID or weights=imagenet"
        )


def _preprocess(x: keras.KerasTensor, mode: str) -> keras.KerasTensor:
    """From [0, 1] RGB pixels to what the base expects, with built-in layers (the model loads in safe mode)."""
    # float32 under any dtype policy: half precision would round the 0-255 values it scales up.
    if mode == "tf":
        return keras.layers.Rescaling(2.0, offset=-1.0, dtype="float32", name="preprocessing")(x)
    if mode == "raw":
        return keras.layers.Rescaling(255.0, dtype="float32", name="preprocessing")(x)
    if mode != "caffe":
        raise ValueError(f"preprocessing must be one of tf, caffe, raw, got {mode!r}")
    # x255, RGB -> BGR and minus the BGR ImageNet mean as one fixed 1x1 convolution: output channel c reads input
    # channel 2 - c.
    layer = keras.layers.Conv2D(3, 1, trainable=False, dtype="float32", name="preprocessing")
    x = layer(x)
    kernel = np.zeros((1, 1, 3, 3), np.float32)
    for channel in range(3):
        kernel[0, 0, 2 - channel, channel] = 255.0
    layer.set_weights([kernel, -np.asarray(CAFFE_BGR_MEAN, np.float32)])
    return x


def _build_base(name: str, size: tuple[int, int], weights_kind: str, weights_path: str | None) -> keras.Model:
    """The keras.applications base, without its top, global-average pooled, named "backbone"."""
    # A .keras model's backbone is copied in after building (_copy_backbone): keras.applications starts it random.
    application_weights = {"imagenet": "imagenet", "h5": weights_path}.get(weights_kind)
    try:
        base = BACKBONES[name].constructor(
            input_shape=(*size, 3), include_top=False, weights=application_weights, pooling="avg"
        )
    except ValueError as error:
        if weights_kind == "h5":
            raise ValueError(
                f"weights={application_weights} is not a no-top weights file of {name}: {_one_line(error)}"
            ) from error
        raise ValueError(f"keras.applications refused {name} at {size[0]}x{size[1]}: {_one_line(error)}") from error
    except Exception as error:
        if weights_kind == "imagenet":
            raise ValueError(
                f"the ImageNet weights of {name} could not be downloaded ({_one_line(error, first_line_only=True)}): "
                "this needs the internet; offline, download that ..._notop.h5 file elsewhere and pass weights=ITS_PATH"
            ) from error
        if weights_kind == "h5":
            raise ValueError(
                f"weights={application_weights} could not be loaded into {name}: {_one_line(error)}"
            ) from error
        raise
    # Renamed rather than built with name=: EfficientNet derives the file name of its ImageNet weights from `name`.
    base.name = "backbone"
    return base


def _copy_backbone(base: keras.Model, path: str, name: str) -> keras.Model:
    """Copies the weights of the "backbone" layer of the .keras model at `path` into `base`; returns that model."""
    try:
        source = keras.saving.load_model(path, compile=False)
    except Exception as error:
        raise ValueError(f"weights={path} could not be loaded as a Keras model: {_one_line(error)}") from error
    try:
        source_base = source.get_layer("backbone")
    except ValueError:
        raise ValueError(
            f"weights={path} holds {source.name}, which has no layer named 'backbone' (not a build_backbone model)"
        ) from None
    source_weights = source_base.get_weights()
    source_shapes = [tuple(weight.shape) for weight in source_weights]
    target_shapes = [tuple(variable.shape) for variable in base.weights]
    if source_shapes != target_shapes:
        if len(source_shapes) != len(target_shapes):
            difference = f"{len(source_shapes)} weight arrays there, {len(target_shapes)} in a {name} backbone"
        else:
            index = next(i for i, shape in enumerate(source_shapes) if shape != target_shapes[i])
            difference = (
                f"weight {index} ({base.weights[index].path}) is {source_shapes[index]} there, "
                f"{target_shapes[index]} in a {name} backbone"
            )
        raise ValueError(f"weights={path}: the backbone of {source.name} does not fit model.name={name}: {difference}")
    base.set_weights(source_weights)
    return source


def _copy_head(model: keras.Model, source: keras.Model, path: str) -> None:
    """Copies the head's weights of `source` (the .keras model at `path`) into `model`: the same classes and layers."""
    for layer_name in HEAD_LAYERS:
        has = [any(layer.name == layer_name for layer in each.layers) for each in (source, model)]
        if has[0] != has[1]:
            raise ValueError(f"head.from_weights=true: {path} {'has' if has[0] else 'has no'} {layer_name} layer, "
                             "unlike this model: give the same head.dense_units")  # fmt: skip
        if not has[0]:
            continue
        target, given = model.get_layer(layer_name), source.get_layer(layer_name)
        shapes = [tuple(weight.shape) for weight in given.get_weights()]
        expected = [tuple(variable.shape) for variable in target.weights]
        if shapes != expected:
            raise ValueError(f"head.from_weights=true: the {layer_name} weights of {path} are {shapes}, this model's "
                             f"{expected}: the same classes and head are needed")  # fmt: skip
        target.set_weights(given.get_weights())


def build_backbone(
    input_shape: Sequence[int],
    num_classes: int,
    name: str = "mobilenet_v2",
    weights: str | os.PathLike | None = "none",
    freeze: bool | int = False,
    input_size: int | None = None,
    head: Mapping | None = None,
    batch_norm_momentum: float = 0.9,
) -> keras.Model:
    """A keras.applications base (one layer named "backbone") and a softmax head, on images scaled to [0, 1].

    weights: "none" (random), "imagenet" (downloaded), a .keras model this builder made (its backbone is copied:
    transfer learning from a previous run) or a keras.applications no-top weights file (.weights.h5 or .h5).
    freeze: True freezes the whole base (and runs its BatchNormalization in inference mode), N freezes all but its
    last N layers. input_size: resize the images to input_size x input_size inside the model first.
    batch_norm_momentum: of the base's BatchNormalization moving statistics (keras.applications' own 0.999 takes
    thousands of steps to forget its initial values: until then, inference on a base trained from scratch is chance).
    head: {"dropout": before the classifier, "dense_units": a hidden ReLU layer of that width, 0 for none,
    "from_weights": also copy the head from the .keras `weights` (the same classes: fine-tuning a transferred model)}.
    """
    if name not in BACKBONES:
        raise ValueError(f"name must be one of {', '.join(BACKBONES)}, got {name!r}")
    if len(input_shape) != 3 or input_shape[2] not in (1, 3):
        raise ValueError(f"input_shape must be (height, width, channels) with 1 or 3 channels, got {input_shape!r}")
    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1):
        raise ValueError(f"input_size must be null (the data's size) or a positive integer, got {input_size!r}")
    dropout, dense_units, head_from_weights = _check_head(head)
    weights_kind, weights_path = _check_weights(weights)
    if head_from_weights and weights_kind != "keras":
        raise ValueError(f"head.from_weights=true needs weights=run:RUN_ID, model:NAME@alias or a .keras path, "
                         f"got weights={weights!r}")  # fmt: skip
    _check_freeze(freeze, weights_kind)
    height, width = (input_size, input_size) if input_size is not None else tuple(input_shape[:2])
    minimum = MIN_SIZES[name]
    if height is None or width is None or min(height, width) < minimum:
        raise ValueError(
            f"model.name={name} needs images of at least {minimum}x{minimum}, got {height}x{width}: "
            f"set model.input_size={minimum} (or more) to resize them inside the model"
        )

    if (
        isinstance(batch_norm_momentum, bool)
        or not isinstance(batch_norm_momentum, (int, float))
        or not (0.0 < batch_norm_momentum < 1.0)
    ):
        raise ValueError(f"batch_norm_momentum must be a number in (0, 1), got {batch_norm_momentum!r}")
    base = _build_base(name, (height, width), weights_kind, weights_path)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(batch_norm_momentum)
    if freeze is not True and freeze is not False and freeze > len(base.layers):
        raise ValueError(f"freeze={freeze} exceeds the {len(base.layers)} layers of the {name} base")
    source = _copy_backbone(base, weights_path, name) if weights_kind == "keras" else None
    if freeze is True:
        base.trainable = False
    elif freeze is not False:
        # A frozen BatchNormalization layer runs in inference mode in Keras 3, even in a training call.
        for layer in base.layers[: len(base.layers) - freeze]:
            layer.trainable = False

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    if input_size is not None:
        x = keras.layers.Resizing(input_size, input_size, dtype="float32", name="resize")(x)
    if input_shape[2] == 1:
        # The bases (and their ImageNet weights) take RGB: gray is the same value in all three channels.
        x = keras.layers.Concatenate(axis=-1, dtype="float32", name="grayscale_to_rgb")([x, x, x])
    x = _preprocess(x, BACKBONES[name].preprocessing)
    # A frozen base runs in inference mode, so that its BatchNormalization keeps the statistics it learned (the Keras
    # transfer-learning guide's pattern): a new head on features that do not move.
    x = base(x, training=False) if freeze is True else base(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    if dense_units:
        x = keras.layers.Dense(dense_units, activation="relu", name="head_dense")(x)
        x = keras.layers.Dropout(dropout, name="head_dense_dropout")(x)
    # float32 under any dtype policy: a half-precision softmax would round away the small probabilities.
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="class_probabilities")(x)
    model = keras.Model(inputs, outputs, name=f"{name}_classifier")
    if head_from_weights:
        _copy_head(model, source, weights_path)
    return model
