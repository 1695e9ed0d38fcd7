"""Tools for tests that start pullwake, break it and watch it (like ``trio.testing``).

Users' tests and pullwake's own (its test fixtures, benchmarks, demo and fault reports) share
these; nothing here imports pytest. Processes run on 127.0.0.1 only.

- :class:`ServerProcess`: a ``pullwake server`` child (start, kill, terminate, pause/resume,
  restart on the same port).
- :class:`RunnerProcess`: a ``pullwake run`` child whose transitions are read back as JSON.
- :class:`ReferenceServer`: the Durable Streams reference server from npm, for interop.
- :func:`throwaway_postgres` / :class:`PostgresServer`: a PostgreSQL cluster in a temporary
  folder, removed at exit.
- :class:`FaultProxy` (TCP faults) and :class:`FaultGateway` (plus HTTP 500/503 bursts).
- :func:`wait_until`: poll a condition, bounded, with a message.
- :class:`AdminClient`: create streams, append, read, put subscriptions.
- :mod:`pullwake.testing.conformance` (import it by name): install and run the public Durable
  Streams conformance suite against any server, every test's status back.
- :mod:`pullwake.testing.e2e` (import it by name): a whole deployment broken on purpose and
  judged, the fault matrix and the chaos soak.

The process launchers block (they wait on pipes and processes): from async code call them
through ``anyio.to_thread.run_sync``.
"""

from .client import AdminClient, ReadResult, subscription_body
from .errors import LaunchError, ProcessStartError, ToolMissing
from .gateway import FaultGateway
from .postgres import PostgresServer, find_bindir, throwaway_postgres
from .processes import START_TIMEOUT, STOP_TIMEOUT, free_port, wait_ready_line
from .proxy import FaultProxy, ProxyStatistics
from .reference import REFERENCE_PACKAGE, ReferenceServer
from .runner import Instance, RunnerProcess
from .server import LISTENING_PREFIX, ServerProcess
from .waiting import wait_until

__all__ = [
    "LISTENING_PREFIX",
    "REFERENCE_PACKAGE",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "AdminClient",
    "FaultGateway",
    "FaultProxy",
    "Instance",
    "LaunchError",
    "PostgresServer",
    "ProcessStartError",
    "ProxyStatistics",
    "ReadResult",
    "ReferenceServer",
    "RunnerProcess",
    "ServerProcess",
    "ToolMissing",
    "find_bindir",
    "free_port",
    "subscription_body",
    "throwaway_postgres",
    "wait_ready_line",
    "wait_until",
]
