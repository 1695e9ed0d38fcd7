"""What the launchers of :mod:`pullwake.testing` raise.

::

    PullwakeError
    └── LaunchError                 a process or tool the test needs could not be started
        ├── ProcessStartError       it exited, or stayed silent, instead of becoming ready
        └── ToolMissing             a program it needs (initdb, node, npm) is not installed
"""

from __future__ import annotations

from pullwake.errors import PullwakeError

__all__ = ["LaunchError", "ProcessStartError", "ToolMissing"]


class LaunchError(PullwakeError):
    """A process or tool a test needs could not be started."""


class ProcessStartError(LaunchError):
    """A process exited, or stayed silent, instead of printing its ready line."""


class ToolMissing(LaunchError):
    """A program the launcher needs is not installed; the message says how to install it."""
