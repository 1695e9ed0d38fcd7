"""Errors of ``pullwake.server``; each carries the HTTP answer it becomes.

::

    PullwakeError
    ├── UnsafeBindError             refusing to listen beyond loopback with auth off
    └── ServerError                 (status, code, message) -> JSON error body
        ├── BadRequest          400
        ├── Unauthorized        401  malformed, forged or expired token
        ├── Forbidden           403  a valid token that may not do this
        ├── NotFound            404
        ├── MethodNotAllowed    405  a known route asked with a method it does not serve
        ├── RequestTimeout      408  the request body did not arrive in time (--body-timeout)
        ├── Conflict            409  with a code: ALREADY_CLAIMED, NO_PENDING_WORK, FENCED, ...
        ├── PayloadTooLarge     413
        ├── UnsupportedMedia    415
        ├── NotImplementedYet   501  a part of the protocol pullwake does not serve
        └── StoreUnavailable    503  the database cannot be reached (retry later)

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

    def __init__(self, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.extra = extra

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


class NotImplementedYet(StoreError):
    status = 501
    default_code = "NOT_IMPLEMENTED"


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
