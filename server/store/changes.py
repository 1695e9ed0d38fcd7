"""The change board: local waiters parked until a stream they watch changes.

A waiter registers an :class:`anyio.Event` for a path *before* it checks the stream, so a
change that commits between the check and the wait is never missed. The board is touched only
from the event loop: a dialect notifies it after a transaction's worker thread has returned, and
PostgreSQL's listener thread hands notifications over through ``anyio.from_thread``. Nothing
here polls.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import anyio


class ChangeBoard:
    """Per-path sets of events, set when the path changes or the board closes."""

    def __init__(self) -> None:
        # Invariant: every set is non-empty and holds the events of waiters still watching.
        self._waiters: dict[str, set[anyio.Event]] = {}
        # Invariant: once True, stays True, and every event ever handed out is set.
        self.closed = False

    @contextmanager
    def watch(self, path: str) -> Iterator[anyio.Event]:
        """Register a waiter on ``path`` for the duration of the block."""
        event = anyio.Event()
        if self.closed:
            event.set()
        waiters = self._waiters.setdefault(path, set())
        waiters.add(event)
        try:
            yield event
        finally:
            waiters.discard(event)
            if not waiters and self._waiters.get(path) is waiters:
                del self._waiters[path]

    def notify(self, paths: Iterable[str]) -> None:
        """Wake every waiter on each of ``paths``."""
        for path in paths:
            for event in self._waiters.get(path, ()):
                event.set()

    def notify_all(self) -> None:
        """Wake every waiter (they re-check; used after notifications may have been lost)."""
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    def close(self) -> None:
        self.closed = True
        self.notify_all()

    def statistics(self) -> dict[str, int]:
        return {
            "paths_watched": len(self._waiters),
            "waiters": sum(len(waiters) for waiters in self._waiters.values()),
        }
