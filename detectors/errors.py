"""The one exception type for bad input, shared by every package.

The command line turns it into one readable line and exit code 2; anything
else that escapes is an internal error (exit code 3).
"""


class BadInputError(ValueError):
    """Input the user can fix: a wrong file, a shape that does not fit, NaN in data."""
