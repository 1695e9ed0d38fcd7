"""The wake server's configuration: one frozen value, built by the CLI or by tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

#: The port the Durable Streams spec registers for standalone servers (§11.1).
DEFAULT_PORT = 4437
DEFAULT_DATABASE_URL = "sqlite:///.pullwake/pullwake.db"


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be greater than 0, got {value!r}")


def _freeze_tokens(value: Mapping[str, str]) -> Mapping[str, str]:
    return dict(value)


@attrs.frozen
class ServerConfig:
    """Everything the server needs to know before it starts.

    Secrets (``admin_token``, ``runner_tokens``) are excluded from ``repr`` so a logged config
    never leaks them.
    """

    host: str = "127.0.0.1"
    #: 0 picks a free port; the listening line reports the real one.
    port: int = DEFAULT_PORT
    database_url: str = DEFAULT_DATABASE_URL
    #: Seconds between keepalive comments on an idle SSE stream (readers treat silence as death).
    keepalive: float = attrs.field(default=3.0, validator=_positive)
    #: A bearer token that may do everything. ``None`` with no runner tokens = auth off.
    admin_token: str | None = attrs.field(default=None, repr=False)
    #: runner id -> that runner's bearer token.
    runner_tokens: Mapping[str, str] = attrs.field(
        factory=dict, converter=_freeze_tokens, repr=False
    )
    #: Largest request body accepted (413 beyond it).
    max_body_bytes: int = attrs.field(default=1024 * 1024, validator=_positive)
    #: Largest batch a catch-up read returns (the reader asks again for the rest).
    max_read_bytes: int = attrs.field(default=1024 * 1024, validator=_positive)
    #: Seconds open connections get to finish after SIGTERM before they are cut.
    shutdown_grace: float = attrs.field(default=3.0, validator=_positive)
    #: Seconds between sweeps that clear expired claim leases (and re-wake pending work).
    lease_sweep_interval: float = attrs.field(default=1.0, validator=_positive)
    #: Seconds a ``live=long-poll`` read waits for data before answering 204.
    long_poll_timeout: float = attrs.field(default=30.0, validator=_positive)
    #: The HTTP server under the app: ``uvicorn`` (asyncio only; with httptools it costs about
    #: 40 % less CPU per request, see docs/performance.md), ``hypercorn`` (asyncio and trio), or
    #: ``auto``: uvicorn on asyncio, hypercorn on trio.
    http: str = attrs.field(
        default="auto", validator=attrs.validators.in_(("auto", "uvicorn", "hypercorn"))
    )

    #: Seconds a connection may stay silent before the first byte of a request (closed then).
    idle_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: Seconds from a request's first byte until its whole head must be in (408 then).
    head_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: Seconds from a request's head until its whole body must be in (408 then).
    body_timeout: float = attrs.field(default=30.0, validator=_positive)
    #: Open connections served at once; past it a new one gets 503 with Retry-After. Lowered
    #: at start-up when the open-file limit leaves less room (see ``limits.py``).
    max_connections: int = attrs.field(default=10_000, validator=_positive)

    @property
    def auth_enabled(self) -> bool:
        """Return True when any bearer token is configured."""
        return self.admin_token is not None or bool(self.runner_tokens)
