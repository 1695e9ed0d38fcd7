"""The transaction the rules run in, and the one way a rule commits and still fails.

:class:`Transaction` is what every rule receives: the dialects (``sqlite.py``, ``postgres.py``)
subclass it to open, commit and roll back, and to say how rows are locked. A rule that raises
a ``StoreError`` is rolled back; one that raises :class:`CommitThenRaise` has its work
committed first (say, an expired lease cleared on the way) and the carried error raised after.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pullwake.server.errors import BadRequest, StoreError

MAX_INT = 2**62


class CommitThenRaise(Exception):
    """Raised by a rule to commit the work done so far and then raise ``error``."""

    def __init__(self, error: StoreError) -> None:
        super().__init__(error.message)
        self.error = error


class Transaction:
    """One open transaction as the rules see it; a dialect subclasses it.

    The dialect owns begin/commit/rollback; this object only runs statements. Rows come back
    as tuples.
    """

    #: Appended to a ``SELECT`` whose rows must stay locked until commit.
    row_lock: str = ""
    #: Appended after ``row_lock`` where rows locked by another transaction may be skipped.
    skip_locked: str = ""
    #: True where each statement reads as of its own start (PostgreSQL's READ COMMITTED): a
    #: statement that waited for a row lock gets the locked row's newest version but every
    #: other table as it was before the wait, so what the lock holder wrote there is read only
    #: by a later statement. False on SQLite, whose writer holds the one write lock from
    #: ``BEGIN IMMEDIATE``, so nothing changes under a transaction.
    stale_joins_after_lock: bool = False

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor
        # Invariant: maps every stream path appended to, created or deleted in this transaction
        # to its new tail position, or to None when that is not a plain append (a delete, a
        # create): waiters then re-read the stream instead of trusting an announced tail.
        self.changed: dict[str, int | None] = {}

    def sql(self, text: str) -> str:
        """Rewrite a statement from ``?`` placeholders into the driver's style."""
        return text

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        self._cursor.execute(self.sql(sql), tuple(params))
        return int(self._cursor.rowcount)

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        self._cursor.executemany(self.sql(sql), [tuple(row) for row in rows])

    def fetchone(self, sql: str, params: Sequence[object] = ()) -> tuple[Any, ...] | None:
        self._cursor.execute(self.sql(sql), tuple(params))
        row = self._cursor.fetchone()
        return None if row is None else tuple(row)

    def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        self._cursor.execute(self.sql(sql), tuple(params))
        return [tuple(row) for row in self._cursor.fetchall()]

    def lock_catalog(self) -> None:
        """Serialise operations that change which streams a subscription links."""

    def next_positions(self, count: int) -> list[int]:
        """Draw ``count`` increasing positions from the store-wide counter."""
        raise NotImplementedError

    def insert_messages(self, stream_id: int, items: Sequence[bytes]) -> int:
        """Insert ``items`` at fresh positions of a locked stream and move its tail there;
        return the new tail. A dialect may do it in fewer statements."""
        positions = sorted(self.next_positions(len(items)))
        self.executemany(
            "INSERT INTO messages (seq, stream_id, data) VALUES (?, ?, ?)",
            [
                (position, stream_id, bytes(data))
                for position, data in zip(positions, items, strict=True)
            ],
        )
        tail = positions[-1]
        self.execute("UPDATE streams SET tail_seq = ? WHERE id = ?", (tail, stream_id))
        return tail

    def notify(self, path: str, tail: int | None = None) -> None:
        """Record that ``path`` changed (to the tail position ``tail`` when it was appended
        to); waiters hear of it once the transaction commits."""
        if path in self.changed and (self.changed[path] is None or tail is None):
            self.changed[path] = None
        else:
            self.changed[path] = tail


def check_int(value: object, what: str, low: int = 0, high: int = MAX_INT) -> int:
    if type(value) is not int or not low <= value <= high:
        raise BadRequest(f"{what} must be an integer from {low} to {high}, got {value!r}")
    return value
