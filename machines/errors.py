"""Errors of ``pullwake.machines``.

::

    PullwakeError
    └── ChartError
        ├── ChartDefinitionError   the chart or its tables contradict each other
        └── UnknownEventError      an event name the chart does not declare
"""

from pullwake.errors import PullwakeError


class ChartError(PullwakeError):
    """Base class of the chart errors."""


class ChartDefinitionError(ChartError):
    """A chart and its activity/ignore tables do not decide every state × event pair."""


class UnknownEventError(ChartError, LookupError):
    """An event was sent that the chart does not declare."""
