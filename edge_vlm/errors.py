"""User-facing errors. The CLI prints these as one line and exits non-zero, without a traceback."""


class EdgeVLMError(Exception):
    """A problem the user can fix (bad path, bad input, missing extra). The message names the value and the fix."""


class MissingDependencyError(EdgeVLMError):
    """An optional dependency is not installed."""
