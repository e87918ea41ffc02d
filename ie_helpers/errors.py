"""One exception type for every problem a user can fix.

Notebooks and the CLI show only its one-line message (no library stack trace),
so every raise site names the problem *and* the fix.
"""


class IEError(Exception):
    """A user-fixable problem: bad parameter, missing data or model, corrupt file."""
