"""Plots of runs and sweeps, as PNG bytes: training curves, a confusion matrix, and a sweep's trials.

Drawn on matplotlib's object API with the Agg canvas (no pyplot, no display, no global state), so that any
process, a driver on a headless node included, can draw them.
"""

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

# A trial's marker by how it ended; the colours are matplotlib's defaults, told apart by shape too.
_TRIAL_MARKERS = {"COMPLETED": ("o", "C0"), "STOPPED": ("X", "C1"), "FAILED": ("x", "C3")}
_TRIAL_ENDS = {"COMPLETED": "completed", "STOPPED": "stopped early", "FAILED": "failed"}
_MOST_TRIALS_NAMED = 12  # a larger sweep's per-epoch panel names no trials: its legend would hide the curves
_DPI = 110  # sharp on a laptop screen, ~100 KB a plot


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _number(value: Any) -> float | None:
    """A metric as a float, None where missing or NaN (matplotlib leaves a gap)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], title: str) -> bytes:
    """Loss and accuracy per epoch, training (solid) and validation (dashed), one colour per run.

    `histories` maps a run's label to its metrics rows (epoch, loss, accuracy, val_loss, val_accuracy).
    """
    figure = Figure(figsize=(11, 4.4), layout="constrained")
    panels = dict(zip(("loss", "accuracy"), figure.subplots(1, 2), strict=True))
    several = len(histories) > 1
    for index, (label, rows) in enumerate(histories.items()):
        epochs = [row["epoch"] for row in rows]
        for metric, axes in panels.items():
            for prefix, style, split in (("", "-", "training"), ("val_", "--", "validation")):
                values = [_number(row.get(prefix + metric)) for row in rows]
                if any(value is not None for value in values):
                    name = f"{label} {split}" if several else split
                    axes.plot(epochs, values, style, color=f"C{index % 10}", marker="o", markersize=3, label=name)
    for metric, axes in panels.items():
        axes.set(title=metric, xlabel="epoch", ylabel=metric)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    panels["accuracy"].legend(loc="lower right", fontsize="small")
    figure.suptitle(title)
    return _png(figure)


def per_class_accuracy(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> dict[str, float | None]:
    """Each class's accuracy: the share of its samples predicted as it (None for a class with no samples)."""
    counts = np.asarray(matrix)
    totals = counts.sum(axis=1)
    return {
        name: float(counts[index, index] / totals[index]) if totals[index] else None
        for index, name in enumerate(class_names)
    }


def confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str) -> bytes:
    """The test samples by true class (rows) and predicted class (columns): counts in the cells, shaded by their
    share of the true class; each row's label carries that class's accuracy."""
    counts = np.asarray(matrix)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    accuracy = per_class_accuracy(counts, class_names)
    size = len(class_names)
    figure = Figure(figsize=(2.2 + 0.75 * size, 1.6 + 0.65 * size), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for row in range(size):
        for column in range(size):
            colour = "white" if shares[row, column] > 0.5 else "black"
            axes.text(column, row, f"{counts[row, column]:,}", ha="center", va="center", color=colour, fontsize=8)
    row_labels = [f"{name} ({'-' if share is None else f'{share:.1%}'})" for name, share in accuracy.items()]
    axes.set_xticks(range(size), class_names, rotation=40, ha="right", rotation_mode="anchor")
    axes.set_yticks(range(size), row_labels)
    axes.set(xlabel="predicted class", ylabel="true class (its accuracy)", title=title)
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the true class's samples")
    return _png(figure)


def trials(
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    metric: str,
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    title: str,
    best: str | None = None,
    log_keys: Sequence[str] = (),
) -> bytes:
    """A sweep at a glance: each trial's best `metric` against each searched key (one panel per key, log scale
    for `log_keys`), and each trial's `metric` per epoch, ending where the trial ended.

    `rows` are the sweep's trials (trial_id, status, the keys' values, best_<metric>); `histories` maps a trial id to
    its metrics rows. A trial's marker says how it ended: completed, stopped early by the scheduler, failed; the
    `best` trial is ringed, and its curve drawn thicker.
    """
    figure = Figure(figsize=(4.6 * (len(keys) + 1), 4.4), layout="constrained")
    panels = figure.subplots(1, len(keys) + 1, squeeze=False)[0]
    for axes, key in zip(panels, keys, strict=False):
        values = [row[key] for row in rows]
        numeric = all(isinstance(value, int | float) and not isinstance(value, bool) for value in values)
        categories = [] if numeric else sorted({str(value) for value in values})
        for row in rows:
            marker, colour = _TRIAL_MARKERS.get(row["status"], ("o", "C7"))
            position = row[key] if numeric else categories.index(str(row[key]))
            score = _number(row.get(f"best_{metric}"))
            if score is not None:
                axes.scatter(position, score, marker=marker, color=colour, s=45)
                if row["trial_id"] == best:
                    axes.scatter(position, score, marker="o", facecolors="none", edgecolors="black", s=220)
        if categories:
            axes.set_xticks(range(len(categories)), categories)
        if key in log_keys:
            axes.set_xscale("log")
        axes.set(title=f"best {metric} by {key}", xlabel=key, ylabel=f"best {metric}")
        axes.grid(alpha=0.3)
    by_epoch = panels[-1]
    for index, row in enumerate(rows):
        history = histories.get(row["trial_id"], [])
        epochs = [entry["epoch"] for entry in history]
        values = [_number(entry.get(metric)) for entry in history]
        if not epochs:
            continue
        marker, _ = _TRIAL_MARKERS.get(row["status"], ("o", "C7"))
        colour = f"C{index % 10}"
        width = 2.8 if row["trial_id"] == best else 1.2
        by_epoch.plot(epochs, values, color=colour, linewidth=width, label=row["trial_id"])
        by_epoch.scatter(epochs[-1], values[-1], marker=marker, color=colour, s=45, zorder=3)
    by_epoch.set(title=f"{metric} per epoch, by trial", xlabel="epoch", ylabel=metric)
    by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_epoch.grid(alpha=0.3)
    if len(rows) <= _MOST_TRIALS_NAMED:
        by_epoch.legend(fontsize="x-small", title="trial", title_fontsize="x-small")
    ends = [
        Line2D([], [], linestyle="", marker=marker, color=colour, label=_TRIAL_ENDS[status])
        for status, (marker, colour) in _TRIAL_MARKERS.items()
    ]
    if best is not None:
        ends.append(Line2D([], [], linestyle="", marker="o", markerfacecolor="none", markeredgecolor="black",
                           markersize=12, label=f"best trial ({best})"))  # fmt: skip
    figure.legend(handles=ends, loc="outside lower center", ncols=len(ends), title="how each trial ended")
    figure.suptitle(title)
    return _png(figure)
