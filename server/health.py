"""Judge a runner's health from its registry row and the claims it holds.

Liveness: ``offline`` when its last heartbeat said ``diagnostics.status == "stopped"`` (a clean
stop), ``online`` while its heartbeat lease runs, ``expired`` once the lease has passed (or
when it never sent a heartbeat).

Verdict: ``unhealthy`` when not online; ``degraded`` when online but something is off (the
heartbeat is late, a held claim's lease has run out, or the runner reports problems in
``diagnostics.problems``, a list of strings); otherwise ``healthy``. ``reasons`` says why.
"""

from __future__ import annotations

from typing import Any

from pullwake.server.store.base import Runner, Subscription

#: A heartbeat is "late" once less than this fraction of its lease is left.
LATE_FRACTION = 1 / 3


def liveness(runner: Runner, now_ms: int) -> tuple[str, int]:
    """Return ``(status, lease_remaining_ms)`` for ``runner`` at ``now_ms``."""
    if runner.diagnostics.get("status") == "stopped":
        return "offline", 0
    if runner.last_heartbeat_at_ms is None or runner.lease_ms is None:
        return "expired", 0
    remaining = runner.last_heartbeat_at_ms + runner.lease_ms - now_ms
    return ("online", remaining) if remaining > 0 else ("expired", 0)


def runner_json(runner: Runner) -> dict[str, Any]:
    """Return the registry row as the HTTP API shows it."""
    return {
        "id": runner.id,
        "label": runner.label,
        "wake_stream": runner.wake_stream,
        "wake_stream_offset": runner.wake_stream_offset,
        "registered_at_ms": runner.registered_at_ms,
        "last_heartbeat_at_ms": runner.last_heartbeat_at_ms,
        "lease_ms": runner.lease_ms,
        "diagnostics": runner.diagnostics,
    }


def health_json(runner: Runner, held: tuple[Subscription, ...], now_ms: int) -> dict[str, Any]:
    """Return the health view: liveness, diagnostics, claims, and a verdict with reasons."""
    status, remaining = liveness(runner, now_ms)
    reasons: list[str] = []
    claims = []
    for sub in held:
        lease_left = (sub.lease_expires_at_ms or now_ms) - now_ms
        claims.append(
            {
                "subscription_id": sub.id,
                "generation": sub.generation,
                "wake_id": sub.wake_id,
                "lease_expires_at_ms": sub.lease_expires_at_ms,
                "lease_remaining_ms": max(lease_left, 0),
                "pending_streams": [link.path for link in sub.streams if link.has_pending],
            }
        )
        if lease_left <= 0:
            reasons.append(f"the lease on subscription {sub.id!r} has run out")
    if status == "offline":
        reasons.insert(0, "the runner stopped cleanly (last heartbeat said status=stopped)")
    elif status == "expired":
        if runner.last_heartbeat_at_ms is None:
            reasons.insert(0, "the runner registered but never sent a heartbeat")
        else:
            late_by = now_ms - runner.last_heartbeat_at_ms - (runner.lease_ms or 0)
            reasons.insert(0, f"the heartbeat lease ran out {late_by} ms ago")
    elif runner.lease_ms and remaining < runner.lease_ms * LATE_FRACTION:
        reasons.append(f"the heartbeat is late ({remaining} ms of lease left)")
    problems = runner.diagnostics.get("problems")
    if status == "online" and isinstance(problems, list):
        reasons.extend(str(p) for p in problems)
    if status != "online":
        verdict = "unhealthy"
    elif reasons:
        verdict = "degraded"
    else:
        verdict = "healthy"
    return {
        "runner_id": runner.id,
        "status": status,
        "lease_remaining_ms": remaining,
        "last_heartbeat_at_ms": runner.last_heartbeat_at_ms,
        "wake_stream": runner.wake_stream,
        "wake_stream_offset": runner.wake_stream_offset,
        "diagnostics": runner.diagnostics,
        "claims": claims,
        "verdict": verdict,
        "reasons": reasons,
    }
