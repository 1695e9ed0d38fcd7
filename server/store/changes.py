"""The change board: local waiters parked until a stream they watch changes.

A waiter registers a :class:`Watch` for a path *before* it checks the stream, so a change that
commits between the check and the wait is never missed. The board is touched only from the
event loop: a dialect notifies it after a transaction's worker thread has returned, and
PostgreSQL's listener thread hands notifications over through ``anyio.from_thread``. Nothing
here polls.

A notification may announce the stream's new tail (an append made through this process knows
it). A waiter that knows where it stands can then tell a change that concerns it from an older
one without asking the store again; a notification without a tail (a delete, a change made by
another server process, a reconnect of the PostgreSQL listener) makes it look at the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import anyio


class Watch:
    """One waiter's view of a path: an event set on every change, and what was announced."""

    __slots__ = ("event", "tail", "unknown")

    def __init__(self) -> None:
        self.event = anyio.Event()
        # Invariant: the highest tail announced since the last rearm(), or None.
        self.tail: int | None = None
        # Invariant: True once a change without a tail was announced since the last rearm().
        self.unknown = False

    def _announce(self, tail: int | None) -> None:
        if tail is None:
            self.unknown = True
        elif self.tail is None or tail > self.tail:
            self.tail = tail
        self.event.set()

    def rearm(self) -> None:
        """Forget what was announced and wait for the next change (the loop's thread only)."""
        self.event = anyio.Event()
        self.tail = None
        self.unknown = False


class ChangeBoard:
    """Per-path sets of watches, told when the path changes or the board closes."""

    def __init__(self) -> None:
        # Invariant: every set is non-empty and holds the watches of waiters still watching.
        self._waiters: dict[str, set[Watch]] = {}
        # Invariant: once True, stays True, and every watch ever handed out is set.
        self.closed = False

    @contextmanager
    def watch(self, path: str) -> Iterator[Watch]:
        """Register a waiter on ``path`` for the duration of the block."""
        watch = Watch()
        if self.closed:
            watch._announce(None)
        waiters = self._waiters.setdefault(path, set())
        waiters.add(watch)
        try:
            yield watch
        finally:
            waiters.discard(watch)
            if not waiters and self._waiters.get(path) is waiters:
                del self._waiters[path]

    def notify(self, changes: Mapping[str, int | None] | Iterable[str]) -> None:
        """Wake every waiter on each changed path: a mapping gives each path's new tail
        (None: unknown), a plain iterable of paths announces no tail."""
        items = changes.items() if isinstance(changes, Mapping) else ((p, None) for p in changes)
        for path, tail in items:
            for watch in self._waiters.get(path, ()):
                watch._announce(tail)

    def notify_all(self) -> None:
        """Wake every waiter (they re-check; used after notifications may have been lost)."""
        for waiters in self._waiters.values():
            for watch in waiters:
                watch._announce(None)

    def close(self) -> None:
        self.closed = True
        self.notify_all()

    def statistics(self) -> dict[str, int]:
        return {
            "paths_watched": len(self._waiters),
            "waiters": sum(len(waiters) for waiters in self._waiters.values()),
        }
