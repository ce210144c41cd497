"""The one exception type for mistakes a user can cause.

Anything raised as :class:`UnseenError` is printed by the CLI as one sentence and ends the
process with exit code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UnseenError(Exception):
    """A problem with the user's input, data or files, explained in one sentence."""

    exit_code = 2


class ConfigError(UnseenError, ValueError):
    """An option, config-file or ``RunConfig`` value that is not accepted (also a
    ``ValueError``, as Python code expects of a bad value)."""


class InputError(UnseenError, ValueError):
    """A wrong argument to a library function (a shape, a missing input): an
    :class:`UnseenError` like every mistake a user can make, and a ``ValueError`` as Python
    code expects of a bad value."""


class SettingError(ConfigError):
    """A score's constructor argument out of range (``KNN(k=0)``): a :class:`ConfigError`,
    as the option's flag gives (so a ``ValueError`` too)."""


class NotFittedError(UnseenError, ValueError, AttributeError):
    """A score used before ``fit``: an :class:`UnseenError`, and a ``ValueError`` and an
    ``AttributeError`` as scikit-learn's ``NotFittedError`` is."""


class DataError(UnseenError):
    """Data that is missing, truncated or malformed."""


class DamagedData(DataError):
    """Data that is there, but truncated or malformed (``unseen datasets`` says "damaged")."""


class Interrupted(UnseenError):
    """A run stopped by SIGINT or SIGTERM after saving a checkpoint (exit 130 or 143)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
