"""Expiry rules: sliding TTLs, absolute expiry, and removing expired streams.

A stream has at most one of a sliding TTL (``ttl_seconds``, ``Stream-TTL``) or an absolute
expiry (``expires_at_ms``, ``Stream-Expires-At``); ``deadline_ms`` says when it expires
(None: never). Under a TTL every read and write moves the deadline to now + TTL (a HEAD does
not); an absolute expiry never moves.

Expiry is lazy and swept, never polled: a stream past its deadline is gone at once for every
operation (reads answer 404 without writing), the next write that meets it removes it, and
:func:`expire_streams`, run by the server's sweeper, removes the rest. Removing an expired
stream is exactly a DELETE (``forks.drop_stream``): its subscription links go, waiters are
told, and a stream that forks still read is soft-deleted instead.
"""

from __future__ import annotations

from pullwake.server.store.rules.catalog import StreamRow, stream_row, stream_row_by_id
from pullwake.server.store.rules.forks import drop_stream
from pullwake.server.store.rules.transaction import Transaction, check_int

#: Streams removed per sweep transaction at most (the next sweep takes the rest).
SWEEP_BATCH = 200


def deadline(ttl_seconds: int | None, expires_at_ms: int | None, now_ms: int) -> int | None:
    """When a stream with this configuration expires, counted from ``now_ms``."""
    if ttl_seconds is not None:
        return now_ms + ttl_seconds * 1000
    return expires_at_ms


def touch(tx: Transaction, row: StreamRow, now_ms: int) -> None:
    """Restart a sliding TTL (a read or write happened); nothing for other streams."""
    if row.ttl_seconds is not None:
        tx.execute(
            "UPDATE streams SET deadline_ms = ? WHERE id = ?",
            (now_ms + row.ttl_seconds * 1000, row.id),
        )


def touch_stream(tx: Transaction, path: str, now_ms: int) -> None:
    """Restart the sliding TTL of ``path`` if it has one and is still live (else nothing)."""
    check_int(now_ms, "now_ms")
    row = stream_row(tx, path, lock=True)
    if row is not None and not row.deleted and not row.expired(now_ms):
        touch(tx, row, now_ms)


def streams_due(tx: Transaction, now_ms: int) -> bool:
    """Tell whether some stream's deadline has passed (one indexed read: the sweeper asks
    this first, so an idle server takes no write lock once a second)."""
    check_int(now_ms, "now_ms")
    row = tx.fetchone(
        "SELECT 1 FROM streams WHERE deadline_ms IS NOT NULL AND deadline_ms <= ? LIMIT 1",
        (now_ms,),
    )
    return row is not None


def expire_streams(tx: Transaction, now_ms: int) -> int:
    """Remove streams whose deadline passed (at most ``SWEEP_BATCH``); return how many."""
    check_int(now_ms, "now_ms")
    tx.lock_catalog()
    removed = 0
    for (stream_id,) in tx.fetchall(
        "SELECT id FROM streams WHERE deadline_ms IS NOT NULL AND deadline_ms <= ? "
        "AND deleted = 0 ORDER BY deadline_ms, id LIMIT ?",
        (now_ms, SWEEP_BATCH),
    ):
        row = stream_row_by_id(tx, int(stream_id), lock=True)
        if row is None or row.deleted or not row.expired(now_ms):
            continue
        drop_stream(tx, row)
        removed += 1
    return removed
