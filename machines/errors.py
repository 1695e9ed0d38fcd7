"""Errors of ``pullwake.machines``.

::

    PullwakeError
    └── ChartError
        ├── ChartDefinitionError   the chart or its tables contradict each other
        ├── UnknownEventError      an event name the chart does not declare
        ├── UnknownStateError      a state id the chart does not declare
        └── DiagramError           a diagram cannot be drawn (Graphviz missing, bad reference)
"""

from pullwake.errors import PullwakeError


class ChartError(PullwakeError):
    """Base class of the chart errors."""


class ChartDefinitionError(ChartError):
    """A chart and its activity/ignore tables do not decide every state × event pair."""


class UnknownEventError(ChartError, LookupError):
    """An event was sent that the chart does not declare."""


class UnknownStateError(ChartError, LookupError):
    """A state id was named that the chart does not declare."""


class DiagramError(ChartError):
    """A diagram cannot be drawn or written: a tool is missing or a reference is wrong."""
