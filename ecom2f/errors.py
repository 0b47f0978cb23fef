"""The one kind of error every ecom2f command reports as a single line, without a traceback.

A :class:`UserError` describes input the user can fix (a configuration key, a storage URI,
a dataset file, the state of a run): its message names the value and what to do. The
``ecom2f`` command (:func:`ecom2f.cli.main`) prints it as ``ecom2f <command>: error: <message>``
on one line of stderr and exits with status 2. Anything else is a bug or an environment
failure and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a run in a state the command cannot act on; the message says what to do."""


class MissingStepError(UserError, FileNotFoundError):
    """A command needs what an earlier step writes, and the run does not have it yet; the
    message names the missing artifact and the command that writes it."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the configuration or the command line names does not exist."""


class BadInputError(UserError, ValueError):
    """A value given on the command line or found in the user's files cannot be used as it is."""


class StaleRunError(UserError, RuntimeError):
    """A run whose artifacts do not belong together (a later step made from an earlier output)."""
