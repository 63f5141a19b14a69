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


def did_you_mean(name: object, known, cutoff: float = 0.6) -> str:
    """"; did you mean 'x'?" for the known name closest to `name` (difflib, at least `cutoff` alike), else ""."""
    import difflib

    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=cutoff)
    return f"; did you mean {close[0]!r}?" if close else ""


def registry_get(registry: dict, name: object, what: str):
    """registry[name] (case and surrounding spaces ignored), or an InputError naming the closest known
    name and all of them: `what` says what the names are ("pruning method", "mask method", ...)."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"a {what} name must be a non-empty string, got {name!r}; one of {list(registry)}")
    key = name.strip().lower()
    if key in registry:
        return registry[key]
    raise InputError(f"unknown {what} {name!r}{did_you_mean(key, registry, 0.5)} ({what}s: {', '.join(registry)})")
