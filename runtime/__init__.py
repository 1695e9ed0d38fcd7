"""The anyio effect layer: the chart actor and the pull-wake runner, behind one public face.

Everything an application that embeds a runner touches is importable from here (see
``docs/embedding.md``): the :class:`Runner` with its :class:`RunnerSettings`,
:class:`SubscriptionSpec`, :class:`Timeouts` and :class:`Backoff`; what a handler sees
(:class:`Claim`, :class:`Batch`, :class:`Wake`, :data:`Handler`); the clocks and offset stores
a test or an app may pass in; the :class:`TransitionRecord` an ``inspect`` hook receives; and
every error the runner raises. The modules behind it (``runner``, ``run``, ``claims``, ...) are
the implementation: their layout may change, these names stay.
"""

from .actor import Actor, ActorStatistics, Outcome, TransitionRecord, describe
from .backoff import Backoff
from .claims import ClaimSettings, ClaimStatistics
from .client import StreamState, Timeouts
from .clock import Clock, ManualClock, SystemClock
from .errors import (
    ActorError,
    AlreadyClaimed,
    ClientError,
    Conflict,
    Fenced,
    InvalidServerURL,
    LeaseLost,
    NoPendingWork,
    NotFound,
    ProtocolViolation,
    Refused,
    Rejected,
    RequestFailed,
    RunnerError,
    RunnerNotRunning,
    RuntimeFailure,
    ServerFailure,
    ServerUnreachable,
    StopTimeout,
    TransientError,
)
from .offsets import FileOffsetStore, MemoryOffsetStore, OffsetStore, RegistryOffsetStore
from .runner import Runner, RunnerStatistics
from .settings import RunnerSettings, SubscriptionSpec
from .work import Batch, Claim, Handler, Wake

__all__ = [
    "Actor",
    "ActorError",
    "ActorStatistics",
    "AlreadyClaimed",
    "Backoff",
    "Batch",
    "Claim",
    "ClaimSettings",
    "ClaimStatistics",
    "ClientError",
    "Clock",
    "Conflict",
    "Fenced",
    "FileOffsetStore",
    "Handler",
    "InvalidServerURL",
    "LeaseLost",
    "ManualClock",
    "MemoryOffsetStore",
    "NoPendingWork",
    "NotFound",
    "OffsetStore",
    "Outcome",
    "ProtocolViolation",
    "Refused",
    "RegistryOffsetStore",
    "Rejected",
    "RequestFailed",
    "Runner",
    "RunnerError",
    "RunnerNotRunning",
    "RunnerSettings",
    "RunnerStatistics",
    "RuntimeFailure",
    "ServerFailure",
    "ServerUnreachable",
    "StopTimeout",
    "StreamState",
    "SubscriptionSpec",
    "SystemClock",
    "Timeouts",
    "TransientError",
    "TransitionRecord",
    "Wake",
    "describe",
]
