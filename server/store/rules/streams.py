"""Stream rules: create, look up, append to (offering wakes), read and delete a stream."""

from __future__ import annotations

from collections.abc import Sequence

from pullwake.server.content_types import normalise_content_type
from pullwake.server.errors import BadRequest, Conflict, content_type_mismatch
from pullwake.server.names import check_path
from pullwake.server.store.base import (
    NOW_OFFSET,
    START_OFFSET,
    AppendResult,
    Message,
    Producer,
    ReadResult,
    StreamMeta,
)
from pullwake.server.store.offsets import format_offset, parse_offset
from pullwake.server.store.rules.catalog import (
    append_rows,
    find_stream,
    insert_stream,
    stream_meta,
    stream_not_found,
)
from pullwake.server.store.rules.producers import (
    advance_writer_seq,
    check_producer,
    check_writer_seq,
    judge_producer,
    record_producer,
)
from pullwake.server.store.rules.transaction import Transaction, check_int
from pullwake.server.store.rules.wakes import wake_linked

#: A read returns at most this many messages, whatever ``max_bytes`` allows.
MAX_READ_MESSAGES = 10_000


def create_stream(
    tx: Transaction, path: str, content_type: str, now_ms: int
) -> tuple[bool, StreamMeta]:
    check_path(path)
    content_type = normalise_content_type(content_type)
    check_int(now_ms, "now_ms")
    tx.lock_catalog()
    row = find_stream(tx, path)
    if row is not None:
        meta = stream_meta(row[1:])
        if meta.content_type != content_type:
            raise Conflict(
                f"stream {path!r} already exists with content type {meta.content_type!r}, not "
                f"{content_type!r}: delete it first or use another path",
                code="STREAM_EXISTS",
            )
        return False, meta
    return True, insert_stream(tx, path, content_type, now_ms)


def stream(tx: Transaction, path: str) -> StreamMeta:
    row = find_stream(tx, path)
    if row is None:
        raise stream_not_found(path)
    return stream_meta(row[1:])


def stream_tail(tx: Transaction, path: str) -> int | None:
    """Return the tail position of ``path``, or None when it does not exist."""
    row = tx.fetchone("SELECT tail_seq FROM streams WHERE path = ?", (path,))
    return None if row is None else int(row[0])


def append(
    tx: Transaction,
    path: str,
    items: Sequence[bytes],
    now_ms: int,
    content_type: str | None = None,
    writer_seq: str | None = None,
    producer: Producer | None = None,
) -> AppendResult:
    """Append ``items``; a producer's retry is answered before ``Stream-Seq`` is checked (see
    ``producers``), and neither check appends anything when it refuses."""
    check_int(now_ms, "now_ms")
    if not items:
        raise BadRequest("nothing to append: send at least one message", code="EMPTY_APPEND")
    for item in items:
        if not isinstance(item, (bytes, bytearray, memoryview)):
            raise BadRequest("each appended message must be bytes")
    if producer is not None:
        check_producer(producer)
    if writer_seq is not None:
        check_writer_seq(writer_seq)
    row = find_stream(tx, path, lock=True)
    if row is None:
        raise stream_not_found(path)
    if content_type is not None and content_type != row[2]:
        raise content_type_mismatch(path, row[2], content_type)
    stream_id = row[0]
    if producer is not None:
        current = judge_producer(tx, stream_id, producer)
        if current is not None:
            return AppendResult(format_offset(int(row[3])), duplicate=True, producer=current)
    if writer_seq is not None:
        advance_writer_seq(tx, stream_id, path, writer_seq)
    if producer is not None:
        record_producer(tx, stream_id, producer, now_ms)
    tail = append_rows(tx, stream_id, path, items)
    wakes: list[tuple[str, bytes]] = []
    wake_linked(tx, stream_id, path, now_ms, wakes)
    return AppendResult(format_offset(tail), tuple(wakes), producer=producer)


def _start_position(offset: str) -> int:
    if offset == START_OFFSET:
        return 0
    return parse_offset(offset)


def read(tx: Transaction, path: str, offset: str, max_bytes: int) -> ReadResult:
    row = find_stream(tx, path)
    if row is None:
        raise stream_not_found(path)
    stream_id, tail = row[0], int(row[3])
    if offset == NOW_OFFSET:
        return ReadResult((), format_offset(tail), True)
    start = _start_position(offset)
    if start > tail:
        raise Conflict(
            f"offset {offset} is past the tail of stream {path!r} ({format_offset(tail)}): "
            "pass an offset this stream returned, '-1' or 'now'",
            code="OFFSET_OUT_OF_RANGE",
        )
    budget = max(1, int(max_bytes))
    rows = tx.fetchall(
        "SELECT seq, data FROM ("
        "  SELECT seq, data, SUM(length(data)) OVER (ORDER BY seq) - length(data) AS bytes_before"
        "  FROM (SELECT seq, data FROM messages WHERE stream_id = ? AND seq > ? AND seq <= ?"
        "        ORDER BY seq LIMIT ?) AS window_rows"
        ") AS sized WHERE bytes_before < ? ORDER BY seq",
        (stream_id, start, tail, MAX_READ_MESSAGES, budget),
    )
    messages = tuple(Message(format_offset(seq), bytes(data)) for seq, data in rows)
    next_position = int(rows[-1][0]) if rows else tail
    return ReadResult(messages, format_offset(next_position), next_position == tail)


def delete_stream(tx: Transaction, path: str) -> None:
    tx.lock_catalog()
    row = find_stream(tx, path, lock=True)
    if row is None:
        raise stream_not_found(path)
    stream_id = row[0]
    tx.execute("DELETE FROM links WHERE stream_id = ?", (stream_id,))
    tx.execute("DELETE FROM producers WHERE stream_id = ?", (stream_id,))
    tx.execute("DELETE FROM messages WHERE stream_id = ?", (stream_id,))
    tx.execute("DELETE FROM streams WHERE id = ?", (stream_id,))
    tx.notify(path)
