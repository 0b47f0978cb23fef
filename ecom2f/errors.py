"""The one kind of error every ecom2f command reports as a single line, without a traceback.

A :class:`UserError` describes input the user can fix (a configuration key, a storage URI,
a dataset file, the state of a run): its message names the value and what to do. Anything
else is a bug or an environment failure and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a run in a state the command cannot act on; the message says what to do."""


class MissingStepError(UserError, FileNotFoundError):
    """A command needs what an earlier step writes, and the run does not have it yet."""
