"""Errors of ``pullwake.server``; each ``ServerError`` carries the HTTP answer it becomes.

Every exception class defined anywhere in ``server/`` is drawn here (a test checks the tree
against the classes)::

    PullwakeError                   (pullwake.errors) the root of every pullwake error
    ├── UnsafeBindError             also ValueError: listening beyond loopback with auth off
    ├── UnsupportedHttpServer       also ValueError: that HTTP server cannot run on this backend
    └── ServerError                 (status, code, message) -> JSON error body; 500 INTERNAL
        ├── MethodNotAllowed    405  a known route asked with a method it does not serve
        ├── RequestTimeout      408  the request body did not arrive in time (--body-timeout)
        └── StoreError               what stores and handlers raise alike
            ├── BadRequest          400  INVALID_PATH, INVALID_ID, INVALID_OFFSET, ...
            ├── Unauthorized        401  malformed, forged or expired token (LEASE_EXPIRED)
            ├── Forbidden           403  a valid token that may not do this
            ├── NotFound            404  STREAM_NOT_FOUND, SUBSCRIPTION_NOT_FOUND, ...
            ├── Gone                410  a soft-deleted stream (forks still read its messages)
            ├── Conflict            409  ALREADY_CLAIMED, NO_PENDING_WORK, FENCED, ...
            ├── PayloadTooLarge     413
            ├── UnsupportedMedia    415
            └── StoreUnavailable    503  the database cannot be reached (retry later)

    Exception                       internal signals, caught inside server/, never answered
    ├── CommitThenRaise             store/rules/transaction.py: commit, then raise its error
    └── HeadTooLarge                http_uvicorn.py: stop parsing an oversized request head

Every answer is ``{"error": {"code": ..., "message": ...}}`` plus any ``extra`` fields the
protocol asks for (``current_holder``, ``generation`` on ``ALREADY_CLAIMED``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pullwake.errors import PullwakeError


class ServerError(PullwakeError):
    """An error with the HTTP status, short code and message it is answered with."""

    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.extra = extra
        #: Response headers the answer carries besides the JSON body (``Stream-Closed`` on a
        #: closed stream's 409, ``Producer-Epoch`` on a fenced producer's 403).
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


class StoreError(ServerError):
    """Raised by a store; the subclasses below say which answer it becomes."""


class BadRequest(StoreError):
    status = 400
    default_code = "BAD_REQUEST"


class Unauthorized(StoreError):
    status = 401
    default_code = "UNAUTHORIZED"


class Forbidden(StoreError):
    status = 403
    default_code = "FORBIDDEN"


class NotFound(StoreError):
    status = 404
    default_code = "NOT_FOUND"


class Gone(StoreError):
    status = 410
    default_code = "GONE"


class MethodNotAllowed(ServerError):
    """A known control route asked with a method it does not serve."""

    status = 405
    default_code = "METHOD_NOT_ALLOWED"


class RequestTimeout(ServerError):
    """The request body did not arrive within its deadline; the connection is closed."""

    status = 408
    default_code = "REQUEST_TIMEOUT"


class Conflict(StoreError):
    status = 409
    default_code = "CONFLICT"


class PayloadTooLarge(StoreError):
    status = 413
    default_code = "PAYLOAD_TOO_LARGE"


class UnsupportedMedia(StoreError):
    status = 415
    default_code = "UNSUPPORTED_MEDIA_TYPE"


class StoreUnavailable(StoreError):
    status = 503
    default_code = "STORE_UNAVAILABLE"


class UnsafeBindError(PullwakeError, ValueError):
    """The server was asked to listen beyond loopback with authentication off."""


class UnsupportedHttpServer(PullwakeError, ValueError):
    """The configuration names an HTTP server that cannot run on the current async backend."""


def content_type_mismatch(path: str, stored: str, sent: str) -> Conflict:
    """The error for an append whose content type is not the stream's."""
    return Conflict(
        f"The stream {path!r} holds {stored}, not {sent[:100]!r}; send Content-Type: {stored}.",
        code="CONTENT_TYPE_MISMATCH",
    )
