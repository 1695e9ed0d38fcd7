"""Hold what a runner knows about itself, for ``runner.health()`` and every heartbeat.

The runner updates one :class:`Diagnostics` as things happen (a transition, an error, a
heartbeat, an event read); :meth:`Diagnostics.report` merges it with the claim pipeline's
counters into the flat JSON object the heartbeat sends and the server's health view shows.
Timestamps are wall-clock ISO 8601 strings in UTC. ``problems`` lists, in words, what is
wrong right now; the server's health view turns a non-empty list into a "degraded" verdict.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from .clock import wall_time

if TYPE_CHECKING:
    from .claims import ClaimStatistics

__all__ = ["Diagnostics"]


@attrs.define
class Diagnostics:
    """A runner's self-knowledge; see the module docstring."""

    #: The chart's leaf state (``streaming``, ``server_gone``...), or ``stopped``.
    status: str = "stopped"
    started_at: str | None = None
    stream_connected: bool = False
    stream_connected_since: str | None = None
    #: How many times the wake stream was lost and a reconnect began (this run).
    reconnect_count: int = 0
    last_error: str | None = None
    last_error_at: str | None = None
    last_heartbeat_at: str | None = None
    last_heartbeat_ok: bool | None = None
    heartbeat_failures: int = 0
    #: SSE events (data and control) read from the wake stream (this run).
    events_received: int = 0
    wakes_received: int = 0
    #: The server URL in use and whether it has a runner registry (None: not known yet).
    server: str | None = None
    registry: bool | None = None

    def record_error(self, text: str) -> None:
        """Remember the latest error and when it happened."""
        self.last_error = text
        self.last_error_at = wall_time()

    def stream_up(self) -> None:
        self.stream_connected = True
        self.stream_connected_since = wall_time()

    def stream_down(self) -> None:
        self.stream_connected = False
        self.stream_connected_since = None

    def problems(self) -> list[str]:
        """Return what is wrong right now, in words (the server's verdict reads this list)."""
        found = []
        if self.status in ("connecting", "after_answer", "server_gone"):
            found.append(f"the wake stream is not connected ({self.status})")
        return found

    def report(self, claims: ClaimStatistics, offset: str | None) -> dict[str, Any]:
        """Return the flat JSON object sent in heartbeats and returned by ``health()``."""
        problems = self.problems()
        if claims.dead_lettered:
            problems.append(
                f"{claims.dead_lettered} claim(s) moved to the dead-letter stream after their "
                f"last attempt (latest at {claims.last_dead_letter_at})"
            )
        if claims.handler_timeouts:
            problems.append(f"{claims.handler_timeouts} handler(s) cancelled at handler_timeout")
        return {
            "problems": problems,
            "status": self.status,
            "started_at": self.started_at,
            "stream_connected": self.stream_connected,
            "stream_connected_since": self.stream_connected_since,
            "reconnect_count": self.reconnect_count,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_heartbeat_at": self.last_heartbeat_at,
            "last_heartbeat_ok": self.last_heartbeat_ok,
            "heartbeat_failures": self.heartbeat_failures,
            "last_claim_at": claims.last_claim_at,
            "last_claim_result": claims.last_claim_result,
            "last_dispatch_at": claims.last_dispatch_at,
            "events_received": self.events_received,
            "wakes_received": self.wakes_received,
            "claims_succeeded": claims.claims_succeeded,
            "claims_skipped": claims.claims_skipped,
            "claims_failed": claims.claims_failed,
            "claim_retries": claims.claim_retries,
            "leases_lost": claims.leases_lost,
            "handler_failures": claims.handler_failures,
            "handler_timeouts": claims.handler_timeouts,
            "dead_lettered": claims.dead_lettered,
            "last_dead_letter_at": claims.last_dead_letter_at,
            "handlers_active": claims.handlers_active,
            "wakes_queued": claims.wakes_queued,
            "offset": offset,
            "server": self.server,
            "registry": self.registry,
        }
