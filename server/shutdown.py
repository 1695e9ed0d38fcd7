"""Tell every long-lived response (SSE, long-poll) to finish now.

Hypercorn's own graceful shutdown waits for open responses to end; an SSE response never ends
by itself. So the server sets this signal first: every response blocked in
:meth:`ShutdownSignal.wait_for_change` is woken at once (its wait scope is cancelled), writes
its last words (a final control event, or a 204), and returns. Only then does hypercorn stop.
"""

from __future__ import annotations

import enum

import anyio

from pullwake.server.store.base import Store


class Wakeup(enum.Enum):
    """Why :meth:`ShutdownSignal.wait_for_change` returned."""

    CHANGED = "changed"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"


class ShutdownSignal:
    """A one-way switch that interrupts every store wait registered with it."""

    def __init__(self) -> None:
        # Invariant: once True, never False again; every scope in _scopes is cancelled then.
        self._started = False
        # Invariant: holds exactly the scopes of waits currently in progress.
        self._scopes: set[anyio.CancelScope] = set()

    @property
    def started(self) -> bool:
        return self._started

    def begin(self) -> None:
        """Flip the switch and interrupt every wait in progress (idempotent)."""
        self._started = True
        for scope in list(self._scopes):
            scope.cancel()

    def statistics(self) -> dict[str, int]:
        return {"waiting": len(self._scopes)}

    async def wait_for_change(
        self, store: Store, path: str, offset: str, timeout: float, *, since: int | None = None
    ) -> Wakeup:
        """Wait for new data on ``path`` past ``offset``, ``timeout`` seconds, or shutdown
        (``since``: see ``Store.wait_for_change``)."""
        if self._started:
            return Wakeup.SHUTDOWN
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                changed = await store.wait_for_change(path, offset, timeout, since=since)
            finally:
                self._scopes.discard(scope)
        if scope.cancelled_caught:
            return Wakeup.SHUTDOWN
        return Wakeup.CHANGED if changed else Wakeup.TIMEOUT
