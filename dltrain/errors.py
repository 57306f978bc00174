"""The one exception type dltrain shows the user as a one-line error."""


class DltrainError(ValueError):
    """A problem the user can fix: bad config, bad data, an infeasible request. Printed in one line."""
