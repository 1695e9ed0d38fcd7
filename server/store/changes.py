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

**Marks.** A reader that takes :meth:`ChangeBoard.mark` of a path *before* it reads the stream,
and finds the mark unchanged once its watch is registered, knows that no change of that path
was announced in between: every commit its read did not see will be announced to the watch, so
it may wait without looking at the store first. A mark is the sequence number of the path's
latest announcement (numbers only grow, so a mark never comes back); paths are remembered for
the :data:`REMEMBERED` most recently announced, and a forgotten path's mark is never lower than
what it was, so forgetting only ever costs a look at the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import anyio

#: How many recently changed paths keep their own mark.
REMEMBERED = 65_536


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
        # Announcement sequence: the number of the latest announcement (of any path).
        self._sequence = 0
        # Invariant: maps at most REMEMBERED paths to the number of their latest announcement,
        # oldest first.
        self._marks: dict[str, int] = {}
        # Invariant: at least the number of every announcement whose path is not in _marks
        # (forgotten paths, and notify_all).
        self._floor = 0

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

    def mark(self, path: str) -> int:
        """Return ``path``'s mark: it differs from any earlier mark of ``path`` once a change
        of ``path`` has been announced since."""
        return self._marks.get(path, self._floor)

    def notify(self, changes: Mapping[str, int | None] | Iterable[str]) -> None:
        """Wake every waiter on each changed path: a mapping gives each path's new tail
        (None: unknown), a plain iterable of paths announces no tail."""
        items = changes.items() if isinstance(changes, Mapping) else ((p, None) for p in changes)
        for path, tail in items:
            self._sequence += 1
            self._marks.pop(path, None)
            self._marks[path] = self._sequence
            if len(self._marks) > REMEMBERED:
                oldest = next(iter(self._marks))
                self._floor = max(self._floor, self._marks.pop(oldest))
            for watch in self._waiters.get(path, ()):
                watch._announce(tail)

    def notify_all(self) -> None:
        """Wake every waiter (they re-check; used after notifications may have been lost)."""
        self._sequence += 1
        self._floor = self._sequence
        self._marks.clear()
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
