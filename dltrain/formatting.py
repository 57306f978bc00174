"""How dltrain writes durations and tables for people, on the console and in the `dltrain` command."""


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


def table(header: list[str], rows: list[list[str]], indent: str = "") -> list[str]:
    """The lines of a table: columns left-aligned, two spaces apart."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        (indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))).rstrip()
        for row in [header, *rows]
    ]
