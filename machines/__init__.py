"""Declarative charts, their tables, diagrams and property-testing helpers.

Pure and synchronous: nothing here does I/O or needs an event loop.
"""

from .errors import (
    ChartDefinitionError,
    ChartError,
    DiagramError,
    UnknownEventError,
    UnknownStateError,
)
from .lifecycle import LIFECYCLE, Lifecycle
from .spec import Activity, ChartSpec, Decision, StepRecorder

__all__ = [
    "LIFECYCLE",
    "Activity",
    "ChartDefinitionError",
    "ChartError",
    "ChartSpec",
    "Decision",
    "DiagramError",
    "Lifecycle",
    "StepRecorder",
    "UnknownEventError",
    "UnknownStateError",
]
