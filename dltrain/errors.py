"""The one exception type dltrain shows the user as a one-line error, and the block that turns a ValueError into
it."""

import contextlib
from collections.abc import Iterator


class DltrainError(ValueError):
    """A problem the user can fix: bad config, bad data, an infeasible request. Printed in one line."""


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """A ValueError in the block (a bad name, version or alias, a file that does not read) is a DltrainError with
    its message."""
    try:
        yield
    except DltrainError:
        raise
    except ValueError as error:
        raise DltrainError(str(error)) from None
