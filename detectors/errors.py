"""The one exception type for bad input, shared by every package.

The command line turns it into one readable line and exit code 2; anything
else that escapes is an internal error (exit code 3).
"""


class BadInputError(ValueError):
    """Input the user can fix: a wrong file, a shape that does not fit, NaN in data."""


def short_listing(names: list[str], limit: int = 8) -> str:
    """A short, comma-separated listing, so error messages stay on one line."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "") if names else "(none)"
