"""Stream rows that several aggregates share: find, create (and link), append.

Creating a stream links it to every subscription that covers it (by pattern or by name), so a
caller of :func:`insert_stream` holds the catalog lock (:meth:`Transaction.lock_catalog`).
Appending rows here only writes messages and moves the tail; offering wakes is
``wakes.wake_linked``'s job.

A soft-deleted stream (deleted while forks still read its messages, see ``forks``) keeps its
row and its path, but :func:`find_stream` does not see it: to subscriptions and wakes it is
gone. :func:`stream_row` sees every row, with the lifecycle columns (closure, expiry, forks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from pullwake.server.errors import NotFound
from pullwake.server.names import compile_glob
from pullwake.server.store.base import StreamMeta
from pullwake.server.store.offsets import format_offset
from pullwake.server.store.rules.transaction import Transaction

#: The content type of a wake stream created on a subscription's behalf (wake events are JSON).
WAKE_CONTENT_TYPE = "application/json"


def stream_meta(row: tuple[Any, ...]) -> StreamMeta:
    path, content_type, tail, created_at_ms = row
    return StreamMeta(path, content_type, format_offset(tail), created_at_ms)


def find_stream(tx: Transaction, path: str, *, lock: bool = False) -> tuple[Any, ...] | None:
    """Return ``(id, path, content_type, tail, created_at_ms)`` or None (also when the stream
    is soft-deleted)."""
    return tx.fetchone(
        "SELECT id, path, content_type, tail_seq, created_at_ms FROM streams "
        "WHERE path = ? AND deleted = 0" + (tx.row_lock if lock else ""),
        (path,),
    )


_ROW_COLUMNS = (
    "id, path, content_type, tail_seq, created_at_ms, closed, ttl_seconds, expires_at_ms, "
    "deadline_ms, deleted, fork_of, fork_seq, fork_anchor_seq, fork_sub_offset"
)


@attrs.frozen
class StreamRow:
    """One row of ``streams`` with its lifecycle columns (migration 0003)."""

    id: int
    path: str
    content_type: str
    tail: int
    created_at_ms: int
    closed: bool
    ttl_seconds: int | None
    expires_at_ms: int | None
    #: When the stream expires (epoch ms), or None for never.
    deadline_ms: int | None
    #: Soft-deleted: gone for clients, kept for the forks that read its messages.
    deleted: bool
    fork_of: int | None
    #: A fork inherits its source's visible messages at positions up to this one.
    fork_seq: int | None
    fork_anchor_seq: int | None
    fork_sub_offset: int | None

    @classmethod
    def of(cls, row: tuple[Any, ...]) -> StreamRow:
        (id_, path, content_type, tail, created, closed, ttl, expires, deadline, deleted) = row[:10]
        fork_of, fork_seq, anchor, sub_offset = row[10:]
        return cls(
            int(id_),
            path,
            content_type,
            int(tail),
            int(created),
            bool(closed),
            None if ttl is None else int(ttl),
            None if expires is None else int(expires),
            None if deadline is None else int(deadline),
            bool(deleted),
            None if fork_of is None else int(fork_of),
            None if fork_seq is None else int(fork_seq),
            None if anchor is None else int(anchor),
            None if sub_offset is None else int(sub_offset),
        )

    def expired(self, now_ms: int) -> bool:
        return self.deadline_ms is not None and self.deadline_ms <= now_ms

    def meta(self) -> StreamMeta:
        return StreamMeta(
            self.path,
            self.content_type,
            format_offset(self.tail),
            self.created_at_ms,
            closed=self.closed,
            ttl_seconds=self.ttl_seconds,
            expires_at_ms=self.expires_at_ms,
        )


def stream_row(tx: Transaction, path: str, *, lock: bool = False) -> StreamRow | None:
    """Return the row at ``path`` (soft-deleted or expired ones included), or None."""
    row = tx.fetchone(
        f"SELECT {_ROW_COLUMNS} FROM streams WHERE path = ?" + (tx.row_lock if lock else ""),
        (path,),
    )
    return None if row is None else StreamRow.of(row)


def stream_row_by_id(tx: Transaction, stream_id: int, *, lock: bool = False) -> StreamRow | None:
    row = tx.fetchone(
        f"SELECT {_ROW_COLUMNS} FROM streams WHERE id = ?" + (tx.row_lock if lock else ""),
        (stream_id,),
    )
    return None if row is None else StreamRow.of(row)


def stream_not_found(path: str) -> NotFound:
    return NotFound(
        f"stream {path!r} does not exist: create it with PUT first", code="STREAM_NOT_FOUND"
    )


def insert_stream(
    tx: Transaction, path: str, content_type: str, now_ms: int, *, tail: int | None = None
) -> StreamMeta:
    """Create a stream at a fresh empty tail (or at ``tail``: a fork's last inherited message)
    and link it to every subscription that covers it.

    The caller holds the catalog lock.
    """
    if tail is None:
        tail = tx.next_positions(1)[0]
    row = tx.fetchone(
        "INSERT INTO streams (path, content_type, created_at_ms, tail_seq) VALUES (?, ?, ?, ?) "
        "RETURNING id",
        (path, content_type, now_ms, tail),
    )
    assert row is not None
    stream_id = row[0]
    named = {
        sub_id
        for (sub_id,) in tx.fetchall(
            "SELECT sub_id FROM subscription_names WHERE path = ?", (path,)
        )
    }
    for sub_id, pattern, wake_stream in tx.fetchall(
        "SELECT id, pattern, wake_stream FROM subscriptions ORDER BY id"
    ):
        by_glob = (
            pattern is not None and path != wake_stream and compile_glob(pattern).matches(path)
        )
        by_name = sub_id in named
        if by_glob or by_name:
            tx.execute(
                "INSERT INTO links (sub_id, stream_id, by_glob, by_name, acked_seq) "
                "VALUES (?, ?, ?, ?, ?)",
                (sub_id, stream_id, int(by_glob), int(by_name), tail),
            )
    tx.notify(path)
    return StreamMeta(path, content_type, format_offset(tail), now_ms)


def append_rows(tx: Transaction, stream_id: int, path: str, items: Sequence[bytes]) -> int:
    """Insert ``items`` into a locked stream and move its tail; return the new tail."""
    tail = tx.insert_messages(stream_id, items)
    tx.notify(path, tail)
    return tail
