"""Stream rows that several aggregates share: find, create (and link), append.

Creating a stream links it to every subscription that covers it (by pattern or by name), so a
caller of :func:`insert_stream` holds the catalog lock (:meth:`Transaction.lock_catalog`).
Appending rows here only writes messages and moves the tail; offering wakes is
``wakes.wake_linked``'s job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
    """Return ``(id, path, content_type, tail, created_at_ms)`` or None."""
    return tx.fetchone(
        "SELECT id, path, content_type, tail_seq, created_at_ms FROM streams WHERE path = ?"
        + (tx.row_lock if lock else ""),
        (path,),
    )


def stream_not_found(path: str) -> NotFound:
    return NotFound(
        f"stream {path!r} does not exist: create it with PUT first", code="STREAM_NOT_FOUND"
    )


def insert_stream(tx: Transaction, path: str, content_type: str, now_ms: int) -> StreamMeta:
    """Create a stream at a fresh empty tail and link it to every subscription that covers it.

    The caller holds the catalog lock.
    """
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
    positions = sorted(tx.next_positions(len(items)))
    tx.executemany(
        "INSERT INTO messages (seq, stream_id, data) VALUES (?, ?, ?)",
        [
            (position, stream_id, bytes(data))
            for position, data in zip(positions, items, strict=True)
        ],
    )
    tail = positions[-1]
    tx.execute("UPDATE streams SET tail_seq = ? WHERE id = ?", (tail, stream_id))
    tx.notify(path, tail)
    return tail
