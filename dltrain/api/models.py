"""Models from Python: register a run's final model, point an alias at a version, and load a model (a run's, NAME:N
or NAME@alias) to predict on NumPy arrays or image files, as `dltrain predict` and `dltrain serve` do."""

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dltrain.api.runs import open_run
from dltrain.api.store import StorageLocation, opened
from dltrain.errors import DltrainError, one_line_errors
from dltrain.registry import Registry
from dltrain.serving.images import BadImage, decode
from dltrain.serving.source import ModelSource, locate
from dltrain.tracking import mirror_alias

if TYPE_CHECKING:  # imported when a model is loaded: `import dltrain` loads no Keras
    import keras

ImageFile = str | os.PathLike | bytes  # an image file's path, or its bytes
Inputs = np.ndarray | ImageFile | Sequence[ImageFile]


class LoadedModel:
    """A final model (a run's, or a registered version's) in memory, with its class names, to predict with."""

    def __init__(self, source: ModelSource):
        from dltrain.serving.classifier import Classifier  # Keras and TensorFlow: only once a model is loaded

        with one_line_errors():  # a model whose outputs are not its classes
            self._classifier = Classifier(source.model_bytes, source.class_names)
        self.source = source

    @property
    def keras(self) -> "keras.Model":
        """The Keras model itself."""
        return self._classifier.model

    @property
    def class_names(self) -> list[str]:
        """The class of each column of `predict`'s probabilities."""
        return self._classifier.class_names

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input's shape: (height, width, channels)."""
        return self._classifier.input_shape

    def __repr__(self) -> str:
        version = f":{self.source.version}" if self.source.version is not None else ""
        return (
            f"<dltrain model {self.source.name}{version} (run {self.source.run_id}), {len(self.class_names)} classes>"
        )

    def predict(self, inputs: Inputs) -> np.ndarray:
        """Class probabilities (float32, one row per input, a column per class of `class_names`) of `inputs`:

        - a NumPy batch shaped like the model's input ([N, 28, 28, 1], or [N, 28, 28] for one channel) of uint8
          pixels 0-255 or of floats already in [0, 1], as training scaled its images; or
        - image files (PNG, JPEG, BMP or GIF: paths or bytes, one or a list), preprocessed as `dltrain serve`
          does: converted to grayscale (or RGB), resized to the model's input, inverted when their border is light.

        DltrainError in one line for a batch of another shape, a file that does not read or is not an image."""
        return self._classifier.probabilities(self._batch(inputs))

    def top(self, inputs: Inputs, k: int = 3) -> list[list[dict]]:
        """The `k` most likely classes of each input (as `predict` takes them), most likely first:
        [{label, probability}], as `dltrain predict` prints them."""
        classes = len(self.class_names)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= classes:
            raise DltrainError(f"top_k={k}: expected 1 to {classes}, the model's classes")
        return self._classifier.top(self.predict(inputs), k)

    def _batch(self, inputs: Inputs) -> np.ndarray:
        """`inputs` as a batch of the model's input shape: pixels 0-255 (uint8) or values in [0, 1] (floats)."""
        shape = self.input_shape
        if not isinstance(inputs, np.ndarray):
            images = [inputs] if isinstance(inputs, (str, os.PathLike, bytes)) else list(inputs)
            decoded = [self._image(image, index) for index, image in enumerate(images)]
            return np.stack(decoded) if decoded else np.zeros((0, *shape), np.uint8)
        batch = inputs[..., np.newaxis] if inputs.shape[1:] == shape[:-1] and shape[-1] == 1 else inputs
        if batch.shape[1:] != shape:
            dimensions = ", ".join(map(str, shape))
            raise DltrainError(f"inputs of shape {list(inputs.shape)}: expected a batch of the model's input, "
                               f"[N, {dimensions}]")  # fmt: skip
        if batch.dtype != np.uint8 and not np.issubdtype(batch.dtype, np.floating):
            raise DltrainError(f"inputs of dtype {batch.dtype}: expected uint8 pixels (0-255) or floats in [0, 1]")
        return batch

    def _image(self, image: ImageFile, index: int) -> np.ndarray:
        """The pixels of one image file (its path or bytes), decoded as `dltrain serve` decodes uploads."""
        if isinstance(image, bytes):
            data, name = image, f"image {index + 1}"
        elif isinstance(image, (str, os.PathLike)):
            path = name = Path(image)
            try:
                data = path.read_bytes()
            except OSError as error:
                raise DltrainError(f"{path}: {error.strerror}") from None
        else:
            raise DltrainError(f"input {index + 1} is a {type(image).__name__}: expected an image file's path or "
                               "bytes, or one NumPy batch of them all")  # fmt: skip
        try:
            return decode(data, self.input_shape, str(name))
        except BadImage as error:
            raise DltrainError(str(error)) from None


def load_model(
    reference: str, *, storage: StorageLocation = None, endpoint_url: str | None = None, region: str | None = None
) -> LoadedModel:
    """The final model `reference` names in `storage` (a run id, NAME:N, NAME@alias, or NAME: its newest version),
    loaded to predict; DltrainError in one line where there is none (an unknown run or name, a run that has not
    completed)."""
    with one_line_errors():
        source = locate(opened(storage, endpoint_url, region), reference)
    return LoadedModel(source)


def register_model(
    run: str,
    name: str,
    *,
    tags: Mapping[str, str] | None = None,
    alias: str | None = None,
    storage: StorageLocation = None,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> dict:
    """Register the final model of the COMPLETED run `run` (a run id, or NAME:N / NAME@alias of the run a version
    came from) as the next version of `name` (RunHandle.register); returns the version's record."""
    return open_run(run, storage=storage, endpoint_url=endpoint_url, region=region).register(
        name, tags=tags, alias=alias
    )


def set_alias(
    name: str,
    version: int,
    alias: str,
    *,
    storage: StorageLocation = None,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> int | None:
    """Point `alias` (e.g. production) of model `name` at its READY `version`, moving it if it was elsewhere, as
    `dltrain models alias` does; NAME@alias then addresses that version. Returns the version it pointed at before,
    if any."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DltrainError(f"version={version!r}: expected an integer >= 1")
    registry = Registry(opened(storage, endpoint_url, region))
    with one_line_errors():
        before = registry.set_alias(name, version, alias)
        saved = registry.config(name, version)
    mirror_alias(saved, name, version, alias)  # in MLflow's registry too, where the version's run was mirrored
    return before
