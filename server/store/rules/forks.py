"""Fork rules: creating a fork, reading across its fork point, and deleting with forks alive.

Theory of operation
-------------------
A fork copies nothing. Every message has a position from the one store-wide counter, so a
fork's row names its source (``fork_of``) and a bound (``fork_seq``): the fork's visible
messages are the source's visible messages at positions up to ``fork_seq``, then its own. A
fork's own messages come later from the counter than anything it inherits, so reading by
position stitches the two in order; a fork of a fork composes the same way, each level
bounding the one above it by the smaller of the two bounds (:func:`segments`).

A fork starts with its tail at its last inherited message (or at a fresh position when it
inherits nothing), so the tail is always its last visible message, as for any stream.

``Stream-Fork-Sub-Offset`` (k) refines the fork point past the anchor offset: for JSON streams
k more messages are inherited (each JSON message has its own position, so this only moves
``fork_seq``); for other streams the first k bytes of the next message are inherited, and since
part of a message has no position of its own, those bytes are copied as the fork's first own
message (the only copy a fork ever makes).

Deleting a stream that forks still read (any row naming it in ``fork_of``) *soft-deletes* it:
the row keeps its path (a PUT there is 409) and its messages, every client operation on it is
410, and subscriptions lose their links to it at once, as for a hard delete. When the last fork
of a soft-deleted stream is removed, the stream is removed too, and so on up the chain
(:func:`drop_stream`). What may never happen: a row referenced by ``fork_of`` is removed, or a
soft-deleted row becomes visible again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pullwake.server.content_types import is_json
from pullwake.server.errors import BadRequest, Conflict, Gone, NotFound
from pullwake.server.names import check_path
from pullwake.server.store.base import START_OFFSET, Fork
from pullwake.server.store.offsets import format_offset, parse_offset
from pullwake.server.store.rules.catalog import StreamRow, stream_row, stream_row_by_id
from pullwake.server.store.rules.transaction import Transaction

#: A source chain is walked at most this deep (a loop can never form; this bounds a bug).
MAX_FORK_DEPTH = 1_000


def gone(path: str) -> Gone:
    return Gone(
        f"stream {path!r} was deleted (forks still read its messages, so its path stays "
        "taken): use another path",
        code="STREAM_GONE",
    )


def segments(tx: Transaction, row: StreamRow) -> list[tuple[int, int | None]]:
    """Return ``(stream id, highest visible position or None for all)`` for a stream and each
    source above it: the rows a read of ``row`` may see."""
    found: list[tuple[int, int | None]] = [(row.id, None)]
    source, bound = row.fork_of, row.fork_seq
    while source is not None and bound is not None:
        if len(found) > MAX_FORK_DEPTH:
            raise RuntimeError(f"fork chain of stream {row.path!r} is deeper than {MAX_FORK_DEPTH}")
        parent = stream_row_by_id(tx, source)
        if parent is None:  # the invariant says never; read what is there rather than fail
            break
        found.append((parent.id, bound))
        if parent.fork_seq is not None:
            bound = min(bound, parent.fork_seq)
        source = parent.fork_of
    return found


def visible_clause(parts: Sequence[tuple[int, int | None]]) -> tuple[str, list[object]]:
    """An SQL condition on ``messages`` selecting the rows of ``segments``."""
    terms: list[str] = []
    params: list[object] = []
    for stream_id, bound in parts:
        if bound is None:
            terms.append("stream_id = ?")
            params.append(stream_id)
        else:
            terms.append("(stream_id = ? AND seq <= ?)")
            params.extend((stream_id, bound))
    return "(" + " OR ".join(terms) + ")", params


def visible_after(
    tx: Transaction, row: StreamRow, position: int, limit: int
) -> list[tuple[int, bytes]]:
    """Up to ``limit`` visible messages of ``row`` after ``position``, in order."""
    where, params = visible_clause(segments(tx, row))
    found = tx.fetchall(
        f"SELECT seq, data FROM messages WHERE {where} AND seq > ? AND seq <= ? "
        "ORDER BY seq LIMIT ?",
        (*params, position, row.tail, limit),
    )
    return [(int(seq), bytes(data)) for seq, data in found]


def last_visible_at(tx: Transaction, row: StreamRow, position: int) -> int | None:
    """The position of ``row``'s last visible message at or before ``position``, or None."""
    where, params = visible_clause(segments(tx, row))
    found = tx.fetchone(
        f"SELECT MAX(seq) FROM messages WHERE {where} AND seq <= ?", (*params, position)
    )
    return None if found is None or found[0] is None else int(found[0])


def source_of(tx: Transaction, fork: Fork, now_ms: int) -> StreamRow:
    """The live source row of a fork request: 404 missing or expired, 409 soft-deleted."""
    path = check_path(fork.source, "Stream-Forked-From")
    source = stream_row(tx, path, lock=True)
    if source is None or (not source.deleted and source.expired(now_ms)):
        raise NotFound(
            f"fork source {path!r} does not exist: create it first, or fork another stream",
            code="STREAM_NOT_FOUND",
        )
    if source.deleted:
        raise Conflict(
            f"fork source {path!r} was deleted (soft-deleted: its forks still read it); fork a "
            "live stream instead",
            code="SOURCE_DELETED",
        )
    return source


def anchor_of(source: StreamRow, fork: Fork) -> int:
    """The fork offset as a position: the source's tail when absent; 400 past the tail."""
    if fork.offset is None:
        return source.tail
    anchor = 0 if fork.offset == START_OFFSET else parse_offset(fork.offset)
    if anchor > source.tail:
        raise BadRequest(
            f"fork offset {fork.offset} is past the tail of {source.path!r} "
            f"({format_offset(source.tail)}): fork at an offset that stream returned",
            code="INVALID_FORK_OFFSET",
        )
    return anchor


def fork_point(
    tx: Transaction, source: StreamRow, anchor: int, sub_offset: int
) -> tuple[int | None, bytes | None]:
    """Resolve where a fork diverges: ``(last inherited position or None, bytes to copy)``."""
    inherited = last_visible_at(tx, source, anchor)
    if sub_offset == 0:
        return inherited, None
    if is_json(source.content_type):
        taken = visible_after(tx, source, anchor, sub_offset)
        if len(taken) < sub_offset:
            raise _overshoot(source, sub_offset, f"only {len(taken)} message(s) follow it")
        return taken[-1][0], None
    following = visible_after(tx, source, anchor, 1)
    if not following:
        raise _overshoot(source, sub_offset, "no message follows it")
    position, data = following[0]
    if sub_offset > len(data):
        raise _overshoot(source, sub_offset, f"the next message has {len(data)} bytes")
    if sub_offset == len(data):
        return position, None
    return inherited, data[:sub_offset]


def _overshoot(source: StreamRow, sub_offset: int, why: str) -> BadRequest:
    return BadRequest(
        f"Stream-Fork-Sub-Offset {sub_offset} reaches past the next append of {source.path!r} "
        f"after the fork offset ({why}): use a smaller sub-offset",
        code="INVALID_FORK_SUB_OFFSET",
    )


def same_fork(tx: Transaction, existing: StreamRow, fork: Fork) -> bool:
    """Tell whether an existing stream is the fork a repeated PUT describes."""
    if existing.fork_of is None:
        return False
    source = stream_row(tx, fork.source)
    if source is None or source.id != existing.fork_of:
        return False
    if (existing.fork_sub_offset or 0) != fork.sub_offset:
        return False
    if fork.offset is None:
        # No offset means "the source's tail": compare it only when one was given.
        return True
    anchor = 0 if fork.offset == START_OFFSET else parse_offset(fork.offset)
    return anchor == existing.fork_anchor_seq


def _has_forks(tx: Transaction, stream_id: int) -> bool:
    return tx.fetchone("SELECT 1 FROM streams WHERE fork_of = ? LIMIT 1", (stream_id,)) is not None


def _remove_row(tx: Transaction, row: StreamRow) -> None:
    tx.execute("DELETE FROM producers WHERE stream_id = ?", (row.id,))
    tx.execute("DELETE FROM messages WHERE stream_id = ?", (row.id,))
    tx.execute("DELETE FROM streams WHERE id = ?", (row.id,))


def drop_stream(tx: Transaction, row: StreamRow) -> bool:
    """Delete a stream (DELETE or expiry): soft when forks read it, else for good, collecting
    soft-deleted sources left without forks. Return True when it was soft-deleted.

    The caller holds the catalog lock and the row's lock.
    """
    tx.execute("DELETE FROM links WHERE stream_id = ?", (row.id,))
    tx.notify(row.path)
    if _has_forks(tx, row.id):
        tx.execute("UPDATE streams SET deleted = 1, deadline_ms = NULL WHERE id = ?", (row.id,))
        return True
    _remove_row(tx, row)
    source = row.fork_of
    for _ in range(MAX_FORK_DEPTH):
        if source is None:
            break
        parent = stream_row_by_id(tx, source, lock=True)
        if parent is None or not parent.deleted or _has_forks(tx, parent.id):
            break
        _remove_row(tx, parent)
        source = parent.fork_of
    return False


def fork_columns(
    source: StreamRow, fork: Fork, anchor: int, fork_seq: int | None
) -> dict[str, Any]:
    """The fork columns of a new fork's row."""
    return {
        "fork_of": source.id,
        "fork_seq": 0 if fork_seq is None else fork_seq,
        "fork_anchor_seq": anchor,
        "fork_sub_offset": fork.sub_offset,
    }
