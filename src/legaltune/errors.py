"""The one kind of error a user can fix: the CLI prints its message (no traceback) and exits 2.

Raise ``UserError`` (or a subclass) for bad input — a config value, a data file, a model name, a
flag combination, a run directory that is not one, a full disk, a run another process is
writing — with a message that names what is wrong, where, and how to fix it. Anything else that
escapes a command is an internal failure: a traceback and exit code 3 (see ``legaltune.cli``).
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake or an environment problem the user can fix; the message says what and how."""


class InputError(UserError, ValueError):
    """A bad value the user gave (a flag, a config value, a file's content, an API argument) or an
    unmet requirement they can fix (a package to install). Also a ``ValueError``: these were raised
    as plain ``ValueError`` before, and callers (and tests) that catch one keep working."""
