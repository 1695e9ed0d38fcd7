"""Errors of ``pullwake.runtime``.

::

    PullwakeError
    └── RuntimeFailure
        ├── ActorError              the actor was misused or is not running
        └── ...                     (the runner's errors; see runner documentation)
"""

from __future__ import annotations

from pullwake.errors import PullwakeError


class RuntimeFailure(PullwakeError):
    """Base class of the runtime's errors."""


class ActorError(RuntimeFailure):
    """The actor was used outside ``async with``, or with an incomplete activity table."""
