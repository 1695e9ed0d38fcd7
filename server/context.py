"""What every request handler reaches through ``request.app.state.ctx``."""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs
from starlette.requests import Request

from pullwake.server.auth import Authenticator, Policy
from pullwake.server.config import ServerConfig
from pullwake.server.metrics import Metrics
from pullwake.server.shutdown import ShutdownSignal
from pullwake.server.store.base import Store


def wall_clock_ms() -> int:
    """Return the wall clock in epoch milliseconds (what the store's ``now_ms`` expects)."""
    return int(time.time() * 1000)


@attrs.define
class AppContext:
    """The store, configuration and shared machinery of one app instance."""

    store: Store
    config: ServerConfig
    auth: Authenticator
    policy: Policy
    shutdown: ShutdownSignal
    metrics: Metrics
    #: Epoch milliseconds; tests replace it to drive lease expiry without sleeping.
    clock: Callable[[], int] = wall_clock_ms


def context_of(request: Request) -> AppContext:
    """Return the :class:`AppContext` of the app serving ``request``."""
    ctx = request.app.state.ctx
    assert isinstance(ctx, AppContext)
    return ctx
