"""How values look in the commands' tables: metrics, times and scores."""

from datetime import datetime


def cell(value: object) -> str:
    """A metric as the tables show it: 4 decimals for a float."""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def moment(iso: str | None) -> str:
    """`2026-12-01 15:31` (UTC); `-` when unknown."""
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M") if iso else "-"


def number(value: float | None) -> str:
    """`0.9120`; `-` when unknown."""
    return "-" if value is None else f"{value:.4f}"
