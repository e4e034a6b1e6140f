"""The one error type for everything a user can get wrong.

Every mistake in a user's input (an option, an environment variable, an ini key, a scenario
file, a results file, a model's import path, a checkpoint given to ``golden``) raises a
``UserError`` whose message says what was wrong, where it came from and the fix. The front doors
(the command line and the pytest plugin) catch ``UserError`` and nothing else: anything else is
a bug, and keeps its traceback.

``UserError`` is a ``ValueError``: the pure parsers that raise it were written to raise
``ValueError``, and callers that catch that still do.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the user's input; the message names it, where it came from and the fix."""


class ConfigError(UserError):
    """A value of a configuration axis (a layout, format, recipe, device, map_location,
    visibility, launcher) that does not exist; the message lists the ones that do."""
