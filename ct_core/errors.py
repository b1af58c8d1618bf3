"""Errors meant for people: one line, naming the option or file and what to do.

The CLI catches :class:`UserError` (and its subclasses) and prints the message
without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: bad option, missing file, unreadable data."""


class ConfigError(UserError, ValueError):
    """An invalid configuration value; the message names the option."""


class DataError(UserError):
    """Input data that cannot be read or does not have the expected layout."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable or does not match the config."""


class WriteError(UserError):
    """A file that could not be written (disk full, file too large, no
    permission, ...); the message names it, the operating system's reason
    and what is still intact."""
