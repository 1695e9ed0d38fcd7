"""Stream rules: create (plain, closed, with a TTL or expiry, or as a fork), look up, append
to (offering wakes, closing), read (across fork points) and delete a stream.

Lifecycle, in one place per concern: closure here (a closed stream takes no appends, ever;
a close-only append to it is a no-op success), expiry in ``expiry`` (every rule here treats a
stream past its deadline as missing, and the writing ones remove it on the way), forks and
soft deletion in ``forks``.
"""

from __future__ import annotations

from collections.abc import Sequence

from pullwake.server.content_types import is_json, normalise_content_type
from pullwake.server.errors import BadRequest, Conflict, content_type_mismatch
from pullwake.server.names import check_path
from pullwake.server.store.base import (
    NOW_OFFSET,
    START_OFFSET,
    AppendResult,
    InlineRead,
    LinkedStream,
    Message,
    Producer,
    ReadResult,
    StreamMeta,
    StreamOptions,
)
from pullwake.server.store.offsets import format_offset, parse_offset
from pullwake.server.store.rules.catalog import (
    StreamRow,
    append_rows,
    insert_stream,
    stream_not_found,
    stream_row,
)
from pullwake.server.store.rules.expiry import deadline, touch
from pullwake.server.store.rules.forks import (
    anchor_of,
    drop_stream,
    fork_columns,
    fork_point,
    gone,
    same_fork,
    segments,
    source_of,
    visible_clause,
)
from pullwake.server.store.rules.producers import (
    advance_writer_seq,
    check_producer,
    check_writer_seq,
    judge_producer,
    record_producer,
)
from pullwake.server.store.rules.transaction import CommitThenRaise, Transaction, check_int
from pullwake.server.store.rules.wakes import wake_linked

#: A read returns at most this many messages, whatever ``max_bytes`` allows.
MAX_READ_MESSAGES = 10_000
#: The default content type of a stream created without one.
DEFAULT_CONTENT_TYPE = "application/octet-stream"


def live_row(
    tx: Transaction, path: str, now_ms: int, *, lock: bool = False, remove_expired: bool = False
) -> StreamRow:
    """The row of a stream clients may use: 404 missing or expired, 410 soft-deleted.

    With ``remove_expired`` (writing rules only) an expired stream met here is removed, and
    that removal is committed before the 404.
    """
    row = stream_row(tx, path, lock=lock)
    if row is None:
        raise stream_not_found(path)
    if row.deleted:
        raise gone(path)
    if row.expired(now_ms):
        if remove_expired:
            tx.lock_catalog()
            drop_stream(tx, row)
            raise CommitThenRaise(stream_not_found(path))
        raise stream_not_found(path)
    return row


def _closed(row: StreamRow) -> Conflict:
    return Conflict(
        f"stream {row.path!r} is closed: it takes no more appends (read it to its end, or "
        "write to another stream)",
        code="STREAM_CLOSED",
        headers={"stream-closed": "true", "stream-next-offset": format_offset(row.tail)},
    )


def _check_options(options: StreamOptions) -> None:
    if options.ttl_seconds is not None:
        check_int(options.ttl_seconds, "Stream-TTL")
        if options.expires_at_ms is not None:
            raise BadRequest(
                "Stream-TTL and Stream-Expires-At exclude each other: send one of them",
                code="INVALID_EXPIRY",
            )
    if options.expires_at_ms is not None:
        check_int(options.expires_at_ms, "Stream-Expires-At (epoch ms)")
    if options.fork is not None:
        check_int(options.fork.sub_offset, "Stream-Fork-Sub-Offset")


def _wanted_expiry(
    tx: Transaction, options: StreamOptions, now_ms: int
) -> tuple[int | None, int | None]:
    """The (TTL, expiry) a create asks for; a fork asking for neither inherits its source's."""
    if options.ttl_seconds is not None or options.expires_at_ms is not None:
        return options.ttl_seconds, options.expires_at_ms
    if options.fork is not None:
        source = stream_row(tx, options.fork.source)
        if source is not None:
            return source.ttl_seconds, source.expires_at_ms
    return None, None


def _same_config(
    tx: Transaction,
    existing: StreamRow,
    content_type: str | None,
    options: StreamOptions,
    now_ms: int,
) -> bool:
    if content_type is not None and content_type != existing.content_type:
        return False
    if (existing.ttl_seconds, existing.expires_at_ms) != _wanted_expiry(tx, options, now_ms):
        return False
    if existing.closed != options.closed:
        return False
    if options.fork is None:
        return existing.fork_of is None
    return same_fork(tx, existing, options.fork)


def create_stream(
    tx: Transaction,
    path: str,
    content_type: str | None,
    now_ms: int,
    items: Sequence[bytes] = (),
    options: StreamOptions | None = None,
) -> tuple[bool, StreamMeta]:
    check_path(path)
    options = options or StreamOptions()
    _check_options(options)
    if content_type is not None:
        content_type = normalise_content_type(content_type)
    elif options.fork is None:
        content_type = DEFAULT_CONTENT_TYPE
    check_int(now_ms, "now_ms")
    tx.lock_catalog()
    existing = stream_row(tx, path, lock=True)
    if existing is not None and not existing.deleted and existing.expired(now_ms):
        drop_stream(tx, existing)
        existing = stream_row(tx, path, lock=True)
    if existing is not None:
        if existing.deleted:
            raise Conflict(
                f"stream {path!r} was deleted but forks still read it, so its path stays "
                "taken: use another path",
                code="STREAM_EXISTS",
            )
        if content_type is not None and content_type != existing.content_type:
            raise Conflict(
                f"stream {path!r} already exists with content type {existing.content_type!r}, "
                f"not {content_type!r}: delete it first or use another path",
                code="STREAM_EXISTS",
            )
        if not _same_config(tx, existing, content_type, options, now_ms):
            raise Conflict(
                f"stream {path!r} already exists with another configuration (TTL or expiry, "
                "closure, or fork source and offset): delete it first or use another path",
                code="STREAM_EXISTS",
            )
        return False, existing.meta()
    ttl, expires = _wanted_expiry(tx, options, now_ms)
    columns: dict[str, object] = {
        "ttl_seconds": ttl,
        "expires_at_ms": expires,
        "deadline_ms": deadline(ttl, expires, now_ms),
    }
    copied: bytes | None = None
    tail: int | None = None
    if options.fork is not None:
        source = source_of(tx, options.fork, now_ms)
        if content_type is None:
            content_type = source.content_type
        elif content_type != source.content_type:
            raise Conflict(
                f"a fork of {source.path!r} holds its content type {source.content_type!r}, "
                f"not {content_type!r}: omit Content-Type or send the source's",
                code="CONTENT_TYPE_MISMATCH",
            )
        anchor = anchor_of(source, options.fork)
        tail, copied = fork_point(tx, source, anchor, options.fork.sub_offset)
        columns.update(fork_columns(source, options.fork, anchor, tail))
    assert content_type is not None
    insert_stream(tx, path, content_type, now_ms, tail=tail)
    lifecycle = {name: value for name, value in columns.items() if value is not None}
    if lifecycle:  # a plain stream keeps the columns' defaults
        assignments = ", ".join(f"{name} = ?" for name in lifecycle)
        tx.execute(f"UPDATE streams SET {assignments} WHERE path = ?", (*lifecycle.values(), path))
    row = stream_row(tx, path, lock=True)
    assert row is not None
    if copied is not None:
        append_rows(tx, row.id, path, [copied])
    if items:
        append_rows(tx, row.id, path, items)
        wake_linked(tx, row.id, path, now_ms, [])
    if options.closed:
        tx.execute("UPDATE streams SET closed = 1 WHERE id = ?", (row.id,))
    created = stream_row(tx, path)
    assert created is not None
    return True, created.meta()


def stream(tx: Transaction, path: str, now_ms: int) -> StreamMeta:
    return live_row(tx, path, now_ms).meta()


def stream_tail(tx: Transaction, path: str) -> int | None:
    """Return the tail position of ``path``, or None when nothing more can come: the stream
    does not exist, is soft-deleted, or is closed (waiters then stop waiting)."""
    row = tx.fetchone("SELECT tail_seq, closed, deleted FROM streams WHERE path = ?", (path,))
    if row is None or row[1] or row[2]:
        return None
    return int(row[0])


def append(
    tx: Transaction,
    path: str,
    items: Sequence[bytes],
    now_ms: int,
    content_type: str | None = None,
    writer_seq: str | None = None,
    producer: Producer | None = None,
    close: bool = False,
) -> AppendResult:
    """Append ``items``; a producer's retry is answered before ``Stream-Seq`` is checked (see
    ``producers``), and neither check appends anything when it refuses."""
    check_int(now_ms, "now_ms")
    if not items and not close:
        raise BadRequest("nothing to append: send at least one message", code="EMPTY_APPEND")
    for item in items:
        if not isinstance(item, (bytes, bytearray, memoryview)):
            raise BadRequest("each appended message must be bytes")
    if producer is not None:
        check_producer(producer)
    if writer_seq is not None:
        check_writer_seq(writer_seq)
    row = live_row(tx, path, now_ms, lock=True, remove_expired=True)
    if producer is not None:
        # A producer's retry is answered as it was the first time, closed stream or not.
        current = judge_producer(tx, row.id, producer)
        if current is not None:
            return AppendResult(
                format_offset(row.tail), duplicate=True, producer=current, closed=row.closed
            )
    if row.closed:
        if close and not items:
            touch(tx, row, now_ms)
            return AppendResult(format_offset(row.tail), (), closed=True, producer=producer)
        raise _closed(row)
    if items and content_type is not None and content_type != row.content_type:
        raise content_type_mismatch(path, row.content_type, content_type)
    if writer_seq is not None:
        advance_writer_seq(tx, row.id, path, writer_seq)
    if producer is not None:
        record_producer(tx, row.id, producer, now_ms)
    tail = row.tail
    wakes: list[tuple[str, bytes]] = []
    if items:
        tail = append_rows(tx, row.id, path, items)
        wake_linked(tx, row.id, path, now_ms, wakes)
    if close:
        tx.execute("UPDATE streams SET closed = 1 WHERE id = ?", (row.id,))
        tx.notify(path)
    touch(tx, row, now_ms)
    return AppendResult(format_offset(tail), tuple(wakes), producer=producer, closed=close)


def _start_position(offset: str) -> int:
    if offset == START_OFFSET:
        return 0
    return parse_offset(offset)


def read(tx: Transaction, path: str, offset: str, max_bytes: int, now_ms: int) -> ReadResult:
    row = live_row(tx, path, now_ms)
    tail = row.tail
    if offset == NOW_OFFSET:
        return ReadResult((), format_offset(tail), True, closed=row.closed)
    start = _start_position(offset)
    if start > tail:
        raise Conflict(
            f"offset {offset} is past the tail of stream {path!r} ({format_offset(tail)}): "
            "pass an offset this stream returned, '-1' or 'now'",
            code="OFFSET_OUT_OF_RANGE",
        )
    rows = _message_rows(tx, row, start, max(1, int(max_bytes)), whole=False)
    messages = tuple(Message(format_offset(seq), bytes(data)) for seq, data in rows)
    next_position = int(rows[-1][0]) if rows else tail
    return ReadResult(
        messages, format_offset(next_position), next_position == tail, closed=row.closed
    )


def _message_rows(
    tx: Transaction, row: StreamRow, start: int, budget: int, *, whole: bool
) -> list[tuple[int, bytes]]:
    """The messages after ``start`` up to the tail, in order, within ``budget`` bytes.

    ``whole=False`` (a read): every message that starts within the budget, so at least one;
    ``whole=True`` (an inline read): only messages that end within it, so perhaps none.
    """
    params: list[object]
    if row.fork_of is None:
        where, params = "stream_id = ?", [row.id]
    else:
        where, params = visible_clause(segments(tx, row))
    bound = "bytes_before + length(data) <= ?" if whole else "bytes_before < ?"
    return [
        (int(seq), bytes(data))
        for seq, data in tx.fetchall(
            "SELECT seq, data FROM ("
            "  SELECT seq, data,"
            "    SUM(length(data)) OVER (ORDER BY seq) - length(data) AS bytes_before"
            f"  FROM (SELECT seq, data FROM messages WHERE {where} AND seq > ? AND seq <= ?"
            "        ORDER BY seq LIMIT ?) AS window_rows"
            f") AS sized WHERE {bound} ORDER BY seq",
            (*params, start, row.tail, MAX_READ_MESSAGES, budget),
        )
    ]


def inline_reads(
    tx: Transaction, streams: Sequence[LinkedStream], budget: int, now_ms: int
) -> tuple[InlineRead, ...]:
    """Read the pending JSON streams of a claim from their acked offsets, in one budget.

    The ``inline-messages`` extension: at most ``budget`` message bytes in all, streams in the
    claim's order. A stream that is not JSON, no longer readable, or whose first message alone
    is over what remains is left out (the runner reads it with a plain GET). A read restarts a
    sliding TTL, as a GET would.
    """
    reads: list[InlineRead] = []
    left = budget
    for link in streams:
        if not link.has_pending or left <= 0:
            continue
        row = stream_row(tx, link.path)
        if row is None or row.deleted or row.expired(now_ms) or not is_json(row.content_type):
            continue
        start = parse_offset(link.acked_offset)
        if start >= row.tail:
            continue
        rows = _message_rows(tx, row, start, left, whole=True)
        if not rows:
            continue
        left -= sum(len(data) for _, data in rows)
        touch(tx, row, now_ms)
        last = rows[-1][0]
        reads.append(
            InlineRead(
                link.path,
                tuple(data for _, data in rows),
                format_offset(last),
                last == row.tail,
            )
        )
    return tuple(reads)


def delete_stream(tx: Transaction, path: str, now_ms: int) -> None:
    tx.lock_catalog()
    row = live_row(tx, path, now_ms, lock=True, remove_expired=True)
    drop_stream(tx, row)
