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


def workers(fewest: int | str, most: int | str) -> str:
    """ "4", or "2-4" for an elastic run (one with resources.min_workers)."""
    return f"{fewest}-{most}" if fewest != most else str(most)


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
