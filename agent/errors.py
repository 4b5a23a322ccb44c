"""Every error the user is meant to read: bad input, or an environment the agent cannot work in.

A command that ends with one of `KNOWN_ERRORS` prints `error: <message>` (one line) and exits 2.
Anything else — a bug in our own code, ValueError and KeyError included — is not caught: Python
prints its traceback and the command exits 1, so a defect never passes for a typo of the user's.
Each module raises the class for its own subject; they are kept here so that this list is complete.
"""

from __future__ import annotations

from l2mu.model.metadata import ModelFileError
from l2mu.model.wisdm import DatasetError


class UserError(Exception):
    """Base of the agent's user-facing errors; the message is one line."""


class UsageError(UserError):
    """An option value that cannot work (an unknown choice, a file of the wrong kind, options that clash)."""


class ConfigError(UserError):
    """A config file that cannot be read, or a key in it that is unknown, of the wrong type or out of range."""


class SourceError(UserError):
    """A watch or recording that cannot be streamed (a malformed address, a model it cannot feed, a lost watch)."""


class RecordingError(UserError):
    """A recording file that is missing or not in the `replay:` format."""


class MqttError(UserError):
    """A broker URL, credential or connection that does not work."""


class BrokerError(UserError):
    """The local broker could not be started."""


class OutboxError(UserError):
    """The queue directory cannot be used (not a directory, a damaged journal, no permission)."""


KNOWN_ERRORS: tuple[type[Exception], ...] = (UserError, DatasetError, ModelFileError)
