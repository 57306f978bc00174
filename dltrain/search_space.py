"""Search spaces as users write them in `conf/sweep/*.yaml`: a nested mapping of config keys to expressions.

    space:
      trainer:
        learning_rate: loguniform(1e-4, 1e-2)
        batch_size: choice([64, 128, 256])
      model:
        dropout: uniform(0.2, 0.5)

Parsing is pure Python (no Ray): the driver checks a space before anything starts, and
dltrain/sweep/tune_settings.py turns the parsed dimensions into Ray Tune's.
"""

import ast
import copy
import re
from typing import Any, NamedTuple

# name -> (argument names, what the expression looks like)
DISTRIBUTIONS = {
    "uniform": (("low", "high"), "uniform(low, high)"),
    "quniform": (("low", "high", "q"), "quniform(low, high, q)"),
    "loguniform": (("low", "high"), "loguniform(low, high)"),
    "randint": (("low", "high"), "randint(low, high)"),
    "choice": (("values",), "choice([a, b, ...])"),
}
FORMS = ", ".join(form for _, form in DISTRIBUTIONS.values())
_CALL = re.compile(r"\s*(?P<name>[a-z]+)\s*\((?P<arguments>.*)\)\s*", re.DOTALL)


class Dimension(NamedTuple):
    """One searched key: its distribution and that distribution's arguments."""

    distribution: str
    arguments: tuple

    def candidates(self) -> list[Any]:
        """Values a trial may get that span the dimension (every choice, or both ends of a range)."""
        if self.distribution == "choice":
            return list(self.arguments[0])
        if self.distribution == "randint":  # Tune's randint excludes `high`
            return [self.arguments[0], self.arguments[1] - 1]
        return list(self.arguments[:2])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse(expression: Any) -> Dimension:
    """Parse one expression such as `loguniform(1e-4, 1e-2)`; ValueError says what is wrong and what is allowed."""
    match = _CALL.fullmatch(expression) if isinstance(expression, str) else None
    if not match or match["name"] not in DISTRIBUTIONS:
        raise ValueError(f"{expression!r} is not a search expression: expected one of {FORMS}")
    names, form = DISTRIBUTIONS[match["name"]]
    try:
        arguments = ast.literal_eval(f"({match['arguments']},)") if match["arguments"].strip() else ()
    except (ValueError, SyntaxError) as error:
        raise ValueError(f"{expression!r}: arguments must be numbers, quoted strings or lists: {form}") from error
    if len(arguments) != len(names):
        raise ValueError(f"{expression!r}: expected {form}")
    dimension = Dimension(match["name"], arguments)
    if dimension.distribution == "choice":
        if not isinstance(arguments[0], list) or not arguments[0]:
            raise ValueError(f"{expression!r}: choice needs a non-empty list, e.g. choice([64, 128])")
        return dimension
    if not all(_is_number(argument) for argument in arguments):
        raise ValueError(f"{expression!r}: {form} takes numbers")
    low, high = arguments[:2]
    if low >= high:
        raise ValueError(f"{expression!r}: low must be < high")
    if dimension.distribution == "loguniform" and low <= 0:
        raise ValueError(f"{expression!r}: loguniform needs 0 < low")
    if dimension.distribution == "randint" and not all(isinstance(value, int) for value in arguments):
        raise ValueError(f"{expression!r}: randint takes integers (high excluded)")
    if dimension.distribution == "quniform" and arguments[2] <= 0:
        raise ValueError(f"{expression!r}: quniform needs q > 0")
    return dimension


def flatten(space: dict, prefix: str = "") -> dict[str, Any]:
    """{'trainer': {'learning_rate': expr}} -> {'trainer.learning_rate': expr}."""
    flat: dict[str, Any] = {}
    for key, value in space.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{path}.")
        else:
            flat[path] = value
    return flat


def assign(config: dict, values: dict[str, Any]) -> dict:
    """A copy of nested `config` with each dotted key in `values` set; KeyError names a key that does not exist."""
    result = copy.deepcopy(config)
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = result
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise KeyError(path)
            node = node[part]
        if leaf not in node:
            raise KeyError(path)
        node[leaf] = value
    return result
