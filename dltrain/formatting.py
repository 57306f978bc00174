"""How dltrain writes durations and tables for people, on the console and in the `dltrain` command, and JSON for
programs."""

import json
import math
from typing import Any


def duration(seconds: float | None) -> str:
    """`8s`, `1m05s`, `2h03m`; `-` when unknown."""
    if seconds is None:
        return "-"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def model_name(model: dict) -> str:
    """`cnn` for a model config whose builder is dltrain.models.cnn.build_cnn: its name without build_; with the
    model's own `name` where it has one (`backbone mobilenet_v2`)."""
    builder = model.get("_target_", "?").rsplit(".", 1)[-1].removeprefix("build_")
    return f"{builder} {model['name']}" if isinstance(model.get("name"), str) else builder


def workers(resources: dict) -> str:
    """ "4", or "2-4" for an elastic run (one with resources.min_workers)."""
    least, most = resources.get("min_workers"), resources.get("num_workers", "?")
    return f"{least}-{most}" if least not in (None, most) else str(most)


def table(header: list[str], rows: list[list[str]], indent: str = "") -> list[str]:
    """The lines of a table: columns left-aligned, two spaces apart."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        (indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))).rstrip()
        for row in [header, *rows]
    ]


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # not measured (a NaN checkpoint_seconds): JSON has no NaN
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(item) for item in value]
    return value


def to_json(value: Any) -> str:
    """Strict JSON (NaN and infinities become null), indented."""
    return json.dumps(_strict(value), indent=2, allow_nan=False, default=str)
