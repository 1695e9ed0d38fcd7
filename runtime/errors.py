"""Errors of ``pullwake.runtime``.

Every answer from the server and every network failure is translated into one of these at a
single edge (:func:`pullwake.runtime.client.map_http_errors`), so the runner and the
applications that embed it never see an ``httpx`` exception::

    PullwakeError
    └── RuntimeFailure
        ├── ActorError              the actor was misused or is not running
        ├── RequestFailed           an exchange with the server failed (.method, .url, .status)
        │   ├── TransientError      worth retrying later, unchanged
        │   │   ├── ServerUnreachable   no answer: connect/read error, timeout, reset
        │   │   └── ServerFailure       a 5xx answer
        │   ├── Refused             a 4xx answer: retrying the same request will not help
        │   │   ├── Rejected            401/403: the credentials were refused (the runner stops)
        │   │   ├── NotFound            404: no such stream, subscription or runner
        │   │   ├── Conflict            409, with ``.code``
        │   │   │   ├── AlreadyClaimed      ALREADY_CLAIMED: another worker holds the lease
        │   │   │   ├── NoPendingWork       NO_PENDING_WORK: nothing left to claim
        │   │   │   └── Fenced              FENCED: this claim's lease is gone
        │   │   └── ClientError         any other 4xx
        │   └── ProtocolViolation   an answer that breaks the protocol (bad JSON, wrong type)
        ├── LeaseLost               a handler's claim was fenced; the handler was cancelled
        └── RunnerError             the runner was misused or could not stop cleanly
            ├── InvalidServerURL        a server URL without http:// or https://, or a host
            ├── RunnerNotRunning        start()/stop() outside ``async with Runner(...)``
            └── StopTimeout             handlers ignored cancellation; ``.stuck`` names them

``Rejected`` is the refusal the runner treats as final (with, on connect, a ``Conflict`` or a
``RunnerError``: a configuration the server will never accept): it stops, keeps the error in
``runner.error``, cancels the ``async with Runner(...)`` block and raises the error on leaving
it; ``wait_state()`` and ``stop()`` raise it too.
"""

from __future__ import annotations

from collections.abc import Sequence

from pullwake.errors import PullwakeError


class RuntimeFailure(PullwakeError):
    """Base class of the runtime's errors."""


class ActorError(RuntimeFailure):
    """The actor was used outside ``async with``, or with an incomplete activity table."""


class RequestFailed(RuntimeFailure):
    """An HTTP exchange with the server failed; see the subclasses for why.

    ``status`` is the HTTP status (``None`` when no answer came), ``code`` the short error code
    of the answer's JSON body (``None`` when it had none), ``body`` the decoded JSON error body,
    ``page`` whether the answer was a web page (HTML: a proxy or a wrong URL answered, not a
    Durable Streams server).
    """

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        url: str = "",
        status: int | None = None,
        code: str | None = None,
        body: dict[str, object] | None = None,
        page: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.url = url
        self.status = status
        self.code = code
        self.body = body or {}
        self.page = page


class TransientError(RequestFailed):
    """The server could not be reached or failed; the same request may work later."""


class ServerUnreachable(TransientError):
    """No answer: the connection was refused, reset, timed out or closed mid-answer."""


class ServerFailure(TransientError):
    """The server answered 5xx (a bug or an outage on its side)."""


class Refused(RequestFailed):
    """The server answered 4xx: repeating the request unchanged will get the same answer."""


class Rejected(Refused):
    """The server refused the credentials (401) or the permission (403)."""


class NotFound(Refused):
    """The server does not know the stream, subscription or runner (404)."""


class Conflict(Refused):
    """The request conflicts with the server's state (409); ``code`` says how."""


class AlreadyClaimed(Conflict):
    """Another worker holds the subscription's lease (ALREADY_CLAIMED)."""


class NoPendingWork(Conflict):
    """The subscription has nothing pending (NO_PENDING_WORK)."""


class Fenced(Conflict):
    """The claim is no longer current (FENCED): its lease expired or another claim replaced it."""


class ClientError(Refused):
    """Any other 4xx answer: a malformed request or one the server does not support."""


class ProtocolViolation(RequestFailed):
    """The server's answer does not follow the protocol (unparseable JSON, missing fields)."""


class LeaseLost(RuntimeFailure):
    """The lease of a claim was lost while its handler ran, so the handler was cancelled.

    The server answered FENCED (or refused the claim token) to an ack: the lease expired, most
    often because the handler blocked the event loop longer than the lease, or another claim
    replaced it. The work is not lost: the server wakes the subscription again.
    """


class RunnerError(RuntimeFailure):
    """The runner was misused, or could not stop cleanly."""


class InvalidServerURL(RunnerError, ValueError):
    """A server URL the runner cannot use: no ``http://``/``https://`` scheme, or no host.

    Raised by ``Runner(...)`` itself, before anything starts, with the corrected URL to write.
    """


class RunnerNotRunning(RunnerError):
    """``start()``/``stop()`` was called outside ``async with Runner(...)``."""


class StopTimeout(RunnerError):
    """Handlers ignored cancellation past the stop bound; ``stuck`` names each of them.

    ``stop()`` returned anyway (it is bounded) and the claims of these handlers were released,
    so the server will hand their work to another claim. The tasks themselves keep running
    until they return: anyio cannot abandon a task, so leaving ``async with Runner(...)`` waits
    for them. Fix the handlers: they must not catch the cancellation exception without
    re-raising it, nor shield long waits.
    """

    def __init__(self, message: str, stuck: Sequence[str]) -> None:
        super().__init__(message)
        self.stuck = tuple(stuck)
