"""The root of every error pullwake raises.

Each part has its own ``errors.py`` whose classes derive from :class:`PullwakeError`, so an
application can catch everything pullwake raises with one ``except``::

    PullwakeError
    ├── pullwake.machines.errors.ChartError
    │   ├── ChartDefinitionError      a chart leaves a state × event pair undecided
    │   └── UnknownEventError         an event the chart does not declare
    ├── pullwake.runtime.errors.RuntimeFailure
    │   └── ...                       (see that module)
    ├── pullwake.server.errors.ServerError
    │   └── ...                       (see that module)
    └── pullwake.testing.errors.LaunchError
        └── ...                       (see that module)
"""


class PullwakeError(Exception):
    """Base class of every error pullwake raises."""
