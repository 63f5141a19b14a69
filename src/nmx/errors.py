"""Errors a user can cause and fix.

Every error that comes from bad input is an `NmxError` whose message says what
was wrong and what to do. The CLI prints it as one line and exits with code 2.
"""


class NmxError(Exception):
    """Base class: invalid input, with a message that says how to fix it."""


class FormatError(NmxError):
    """An unknown or malformed number-format name, or a format used wrongly."""


class InputError(NmxError):
    """A tensor, file or argument that cannot be processed as given."""
