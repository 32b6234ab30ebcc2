"""User errors: problems a user can fix, explained in one line.

Every command-line tool (`python -m server|client|sim`) turns a :class:`UserError` into
``error: <message>`` on stderr and exit code 2. Anything else (a shape error, an
out-of-memory, a ``KeyError`` in our own code) is a bug and keeps its traceback.

The subclasses that replace an earlier ``ValueError`` also derive from ``ValueError``
so that callers catching the old type keep working; the CLIs never catch ``ValueError``
itself.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (input, settings, state); the message says how, in one line."""


class ConfigError(UserError, ValueError):
    """A setting (CLI flag, run config, node config, preset) that is out of range or inconsistent."""


class ResumeMismatch(ConfigError):
    """A resume under a run config that differs from the one the run was started with."""


class FederationFailed(UserError):
    """One or more federated runs did not finish; their logs say why."""


# A user's file or folder that is missing, unreadable or the wrong kind: one line, not a traceback.
# Other OSErrors (a full disk, an I/O error) keep their traceback.
FILE_ERRORS: tuple[type[OSError], ...] = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
USER_ERRORS: tuple[type[Exception], ...] = (UserError, *FILE_ERRORS)
