"""Clocks: where the runtime reads the time and waits for delays.

Everything in the runtime that waits for a *delay* (backoff, heartbeat interval, retry pauses)
goes through a :class:`Clock`, so tests can swap in :class:`ManualClock` and make a 30-second
backoff pass in no time. Network timeouts are not delays: they stay in real time, inside httpx.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from datetime import UTC, datetime
from typing import Protocol

import anyio
import anyio.lowlevel

__all__ = ["Clock", "ManualClock", "SystemClock", "wall_time"]


class Clock(Protocol):
    """Read the time and sleep; the runtime's only source of both."""

    def now(self) -> float:
        """Return the current time in seconds (monotonic; the origin is arbitrary)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``; cancellable like any anyio checkpoint."""
        ...


class SystemClock:
    """The event loop's monotonic clock."""

    def now(self) -> float:
        return anyio.current_time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that moves only when a test calls :meth:`advance`.

    ``sleep`` parks the caller until the clock has been advanced past its deadline; sleepers
    wake in deadline order. :meth:`wait_sleepers` lets a test wait until the code under test is
    actually asleep, so advancing never races with it.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        # Invariant: every entry is (deadline, seq, event) of a sleeper that has not been woken.
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = itertools.count()
        # Invariant: set (and replaced by None) whenever the sleepers change; created lazily
        # because an anyio Event needs a running event loop.
        self._changed: anyio.Event | None = None

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if math.isnan(seconds):
            raise ValueError("sleep() got NaN seconds")
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        entry = (self._now + seconds, next(self._seq), event)
        heapq.heappush(self._sleepers, entry)
        self._notify()
        try:
            await event.wait()
        finally:
            if not event.is_set():
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)
                self._notify()

    def advance(self, seconds: float) -> None:
        """Move the clock forward and wake every sleeper whose deadline has come."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, event = heapq.heappop(self._sleepers)
            event.set()
        self._notify()

    def sleepers(self) -> int:
        """Return how many tasks are asleep on this clock."""
        return len(self._sleepers)

    def next_deadline(self) -> float | None:
        """Return the earliest deadline of a sleeper, or ``None`` when nobody sleeps."""
        return self._sleepers[0][0] if self._sleepers else None

    async def wait_sleepers(self, count: int = 1) -> None:
        """Wait until at least ``count`` tasks are asleep on this clock."""
        while len(self._sleepers) < count:
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now!r}, sleepers={len(self._sleepers)})"


def wall_time() -> str:
    """Return the current wall-clock time as an ISO 8601 UTC string (for diagnostics).

    Diagnostics show when things happened in the world, so this reads the system's wall
    clock, never a :class:`Clock` (whose seconds may be a test's manual time).
    """
    return datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="milliseconds")
