"""The plots dltrain draws: PNGs of the expected size, drawn from metrics with gaps, and per-class accuracy."""

import io
import math

import pytest
from PIL import Image

from dltrain import plots

CLASSES = ["cat", "dog", "bird"]


def _image(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def _history(epochs: int, validation: bool = True) -> list[dict]:
    rows = [{"epoch": epoch, "loss": 1 / epoch, "accuracy": 1 - 0.5 / epoch} for epoch in range(1, epochs + 1)]
    if validation:
        rows = [row | {"val_loss": row["loss"] + 0.1, "val_accuracy": row["accuracy"] - 0.05} for row in rows]
    return rows


def test_curves_of_several_runs_with_and_without_validation():
    runs = {"a": _history(5), "b": _history(3, validation=False), "c": _history(4)}
    runs["c"][1]["val_loss"] = math.nan  # a gap, not a failure
    image = _image(plots.curves(runs, "3 runs"))
    assert image.format == "PNG" and image.size == (1210, 484)
    colours = set(image.convert("RGB").getdata())
    assert len(colours) > 50  # drawn, not blank


def test_per_class_accuracy_is_each_rows_diagonal_share():
    matrix = [[8, 2, 0], [1, 1, 0], [0, 0, 0]]
    assert plots.per_class_accuracy(matrix, CLASSES) == {"cat": 0.8, "dog": 0.5, "bird": None}


def test_confusion_matrix_grows_with_the_classes():
    small = _image(plots.confusion_matrix([[5, 1], [2, 7]], CLASSES[:2], "two"))
    large = _image(plots.confusion_matrix([[9] * 10] * 10, [f"class {n}" for n in range(10)], "ten"))
    assert small.width < large.width and small.height < large.height


@pytest.mark.parametrize("best", [None, "t2"])
def test_trials_has_a_panel_per_searched_key_and_one_of_curves(best):
    rows = [
        {"trial_id": "t1", "status": "COMPLETED", "lr": 1e-3, "optimizer": "adam", "best_val_accuracy": 0.8},
        {"trial_id": "t2", "status": "STOPPED", "lr": 1e-2, "optimizer": "sgd", "best_val_accuracy": 0.85},
        {"trial_id": "t3", "status": "FAILED", "lr": 1e-4, "optimizer": "adam", "best_val_accuracy": None},
    ]
    histories = {"t1": _history(4), "t2": _history(2), "t3": []}
    png = plots.trials(rows, ["lr", "optimizer"], "val_accuracy", histories, "sweep", best, log_keys=["lr"])
    assert _image(png).width == round(4.6 * 3 * 110)
