"""The store's rules, written once: every operation as one synchronous transaction body.

Theory of operation
-------------------
Each public function here takes an open :class:`Transaction` and does one store operation in
full: it reads, decides and writes, and either returns (the dialect commits) or raises a
``StoreError`` (the dialect rolls back, so nothing is applied). :class:`CommitThenRaise` is
the one exception to that: it commits what was done (say, an expired lease cleared on the way)
and then raises the error it carries.

The dialects (``sqlite.py``, ``postgres.py``) only open transactions, translate driver errors
and pass notifications on. The SQL here uses ``?`` placeholders and the subset of SQL both
databases speak (``ON CONFLICT``, ``RETURNING``, window functions). Rows that a decision depends
on are read with :attr:`Transaction.row_lock` appended: ``FOR NO KEY UPDATE`` on PostgreSQL,
nothing on SQLite, where ``BEGIN IMMEDIATE`` already holds the database's write lock.
Operations that change which streams a subscription covers take :meth:`Transaction.lock_catalog`
so a stream created while a subscription is created can never miss its link.

Data model: every message has a *position* from one counter shared by all streams; a stream's
tail is the position of its last message (or the position drawn when it was created, if it is
empty). A link joins a subscription to a stream with an acked position; the subscription has
pending work when some link's tail is past its acked position.

A subscription's wake state (what may never happen):

* ``wake_id`` set  = a wake is in flight (an event was appended, or a claim minted one);
  a new wake is issued only when ``wake_id`` is NULL and no live lease is held, so there is
  never more than one wake event outstanding per subscription.
* ``holder`` set   = a lease is held until ``lease_expires_at_ms``; ``holder`` set implies
  ``wake_id`` set. Every claim gets a generation and wake id no earlier holder had.
* ``expired_generation`` = the generation whose lease last expired, so a late request from that
  holder is told its lease expired (401) rather than that it was fenced (409).
* acked positions never move backwards, and never past the tail.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

import attrs

from pullwake.server.errors import (
    BadRequest,
    Conflict,
    NotFound,
    StoreError,
    Unauthorized,
    content_type_mismatch,
)
from pullwake.server.store.base import (
    NOW_OFFSET,
    START_OFFSET,
    AckItem,
    AckResult,
    AppendResult,
    Claim,
    LinkedStream,
    Message,
    ReadResult,
    Runner,
    StreamMeta,
    Subscription,
    SubscriptionConfig,
)
from pullwake.server.store.offsets import format_offset, is_offset, parse_offset
from pullwake.server.store.paths import (
    check_identifier,
    check_path,
    compile_glob,
    is_json_content_type,
    normalise_content_type,
)
from pullwake.server.store.tokens import TokenClaims, sign_token, verify_token

MIN_LEASE_TTL_MS = 1_000
MAX_LEASE_TTL_MS = 600_000
DEFAULT_LEASE_TTL_MS = 30_000
MAX_DESCRIPTION_CHARS = 2_000
MAX_DIAGNOSTICS_CHARS = 65_536
#: A read returns at most this many messages, whatever ``max_bytes`` allows.
MAX_READ_MESSAGES = 10_000
WAKE_CONTENT_TYPE = "application/json"
_MAX_INT = 2**62


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

    def notify(self, path: str, tail: int | None = None) -> None:
        """Record that ``path`` changed (to the tail position ``tail`` when it was appended
        to); waiters hear of it once the transaction commits."""
        if path in self.changed and (self.changed[path] is None or tail is None):
            self.changed[path] = None
        else:
            self.changed[path] = tail


# -- checks ----------------------------------------------------------------------------------


def _check_int(value: object, what: str, low: int = 0, high: int = _MAX_INT) -> int:
    if type(value) is not int or not low <= value <= high:
        raise BadRequest(f"{what} must be an integer from {low} to {high}, got {value!r}")
    return value


def normalise_config(config: SubscriptionConfig) -> SubscriptionConfig:
    """Validate a subscription's configuration and return it normalised.

    Streams are sorted and de-duplicated; ``lease_ttl_ms`` must be 1000..600000. Raises
    ``BadRequest`` (``INVALID_SUBSCRIPTION``, ``INVALID_PATH``, ``INVALID_PATTERN``).
    """
    if config.type != "pull-wake":
        raise BadRequest(
            f"subscription type {config.type!r} is not served: use 'pull-wake'",
            code="INVALID_SUBSCRIPTION",
        )
    check_path(config.wake_stream, "wake_stream")
    if config.pattern is not None:
        compile_glob(config.pattern)
    streams = tuple(sorted({check_path(path, "stream in 'streams'") for path in config.streams}))
    if config.pattern is None and not streams:
        raise BadRequest(
            "a subscription needs a 'pattern', a non-empty 'streams' list, or both",
            code="INVALID_SUBSCRIPTION",
        )
    lease = config.lease_ttl_ms
    if type(lease) is not int or not MIN_LEASE_TTL_MS <= lease <= MAX_LEASE_TTL_MS:
        raise BadRequest(
            f"lease_ttl_ms must be an integer from {MIN_LEASE_TTL_MS} to {MAX_LEASE_TTL_MS}, "
            f"got {lease!r}",
            code="INVALID_SUBSCRIPTION",
        )
    description = config.description
    if description is not None and (
        not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS
    ):
        raise BadRequest(
            f"description must be text of at most {MAX_DESCRIPTION_CHARS} characters",
            code="INVALID_SUBSCRIPTION",
        )
    return attrs.evolve(config, streams=streams)


def _config_json(config: SubscriptionConfig) -> str:
    return json.dumps(attrs.asdict(config), sort_keys=True, separators=(",", ":"))


def _config_from_json(text: str) -> SubscriptionConfig:
    fields = json.loads(text)
    fields["streams"] = tuple(fields["streams"])
    return SubscriptionConfig(**fields)


# -- streams ---------------------------------------------------------------------------------


def _stream_meta(row: tuple[Any, ...]) -> StreamMeta:
    path, content_type, tail, created_at_ms = row
    return StreamMeta(path, content_type, format_offset(tail), created_at_ms)


def _find_stream(tx: Transaction, path: str, *, lock: bool = False) -> tuple[Any, ...] | None:
    """Return ``(id, path, content_type, tail, created_at_ms)`` or None."""
    return tx.fetchone(
        "SELECT id, path, content_type, tail_seq, created_at_ms FROM streams WHERE path = ?"
        + (tx.row_lock if lock else ""),
        (path,),
    )


def _stream_not_found(path: str) -> NotFound:
    return NotFound(
        f"stream {path!r} does not exist: create it with PUT first", code="STREAM_NOT_FOUND"
    )


def _insert_stream(tx: Transaction, path: str, content_type: str, now_ms: int) -> StreamMeta:
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


def create_stream(
    tx: Transaction, path: str, content_type: str, now_ms: int
) -> tuple[bool, StreamMeta]:
    check_path(path)
    content_type = normalise_content_type(content_type)
    _check_int(now_ms, "now_ms")
    tx.lock_catalog()
    row = _find_stream(tx, path)
    if row is not None:
        meta = _stream_meta(row[1:])
        if meta.content_type != content_type:
            raise Conflict(
                f"stream {path!r} already exists with content type {meta.content_type!r}, not "
                f"{content_type!r}: delete it first or use another path",
                code="STREAM_EXISTS",
            )
        return False, meta
    return True, _insert_stream(tx, path, content_type, now_ms)


def stream(tx: Transaction, path: str) -> StreamMeta:
    row = _find_stream(tx, path)
    if row is None:
        raise _stream_not_found(path)
    return _stream_meta(row[1:])


def stream_tail(tx: Transaction, path: str) -> int | None:
    """Return the tail position of ``path``, or None when it does not exist."""
    row = tx.fetchone("SELECT tail_seq FROM streams WHERE path = ?", (path,))
    return None if row is None else int(row[0])


def _append_rows(tx: Transaction, stream_id: int, path: str, items: Sequence[bytes]) -> int:
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


def _wake_linked(
    tx: Transaction, stream_id: int, path: str, now_ms: int, wakes: list[tuple[str, bytes]]
) -> None:
    """Offer a wake to every subscription linked to a stream that was just appended to."""
    for (sub_id,) in tx.fetchall(
        "SELECT sub_id FROM links WHERE stream_id = ? ORDER BY sub_id", (stream_id,)
    ):
        _maybe_wake(tx, sub_id, now_ms, path, wakes)


def append(
    tx: Transaction,
    path: str,
    items: Sequence[bytes],
    now_ms: int,
    content_type: str | None = None,
) -> AppendResult:
    _check_int(now_ms, "now_ms")
    if not items:
        raise BadRequest("nothing to append: send at least one message", code="EMPTY_APPEND")
    for item in items:
        if not isinstance(item, (bytes, bytearray, memoryview)):
            raise BadRequest("each appended message must be bytes")
    row = _find_stream(tx, path, lock=True)
    if row is None:
        raise _stream_not_found(path)
    if content_type is not None and content_type != row[2]:
        raise content_type_mismatch(path, row[2], content_type)
    tail = _append_rows(tx, row[0], path, items)
    wakes: list[tuple[str, bytes]] = []
    _wake_linked(tx, row[0], path, now_ms, wakes)
    return AppendResult(format_offset(tail), tuple(wakes))


def _start_position(offset: str) -> int:
    if offset == START_OFFSET:
        return 0
    return parse_offset(offset)


def read(tx: Transaction, path: str, offset: str, max_bytes: int) -> ReadResult:
    row = _find_stream(tx, path)
    if row is None:
        raise _stream_not_found(path)
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
    row = _find_stream(tx, path, lock=True)
    if row is None:
        raise _stream_not_found(path)
    stream_id = row[0]
    tx.execute("DELETE FROM links WHERE stream_id = ?", (stream_id,))
    tx.execute("DELETE FROM messages WHERE stream_id = ?", (stream_id,))
    tx.execute("DELETE FROM streams WHERE id = ?", (stream_id,))
    tx.notify(path)


# -- subscriptions: loading ------------------------------------------------------------------

_SUB_COLUMNS = (
    "id, config_json, created_at_ms, generation, wake_id, holder, lease_expires_at_ms, "
    "expired_generation"
)


@attrs.frozen
class _SubRow:
    id: str
    config: SubscriptionConfig
    created_at_ms: int
    generation: int
    wake_id: str | None
    holder: str | None
    lease_expires_at_ms: int | None
    expired_generation: int | None

    def lease_live(self, now_ms: int) -> bool:
        return (
            self.holder is not None
            and self.lease_expires_at_ms is not None
            and self.lease_expires_at_ms > now_ms
        )

    def lease_lapsed(self, now_ms: int) -> bool:
        return self.holder is not None and not self.lease_live(now_ms)


@attrs.frozen
class _Link:
    stream_id: int
    path: str
    by_glob: bool
    by_name: bool
    acked: int
    tail: int

    def linked(self) -> LinkedStream:
        return LinkedStream(
            self.path,
            "explicit" if self.by_name else "glob",
            format_offset(self.acked),
            format_offset(self.tail),
        )


def _load_sub(tx: Transaction, sub_id: str, *, lock: bool) -> _SubRow | None:
    row = tx.fetchone(
        f"SELECT {_SUB_COLUMNS} FROM subscriptions WHERE id = ?" + (tx.row_lock if lock else ""),
        (sub_id,),
    )
    if row is None:
        return None
    return _SubRow(row[0], _config_from_json(row[1]), *row[2:])


def _sub_not_found(sub_id: str) -> NotFound:
    return NotFound(
        f"subscription {sub_id!r} does not exist (never created, or deleted): create it with "
        "PUT, then claim again",
        code="SUBSCRIPTION_NOT_FOUND",
    )


def _require_sub(tx: Transaction, sub_id: str, *, lock: bool) -> _SubRow:
    sub = _load_sub(tx, sub_id, lock=lock)
    if sub is None:
        raise _sub_not_found(sub_id)
    return sub


def _links(tx: Transaction, sub_id: str) -> list[_Link]:
    return [
        _Link(stream_id, path, bool(by_glob), bool(by_name), int(acked), int(tail))
        for stream_id, path, by_glob, by_name, acked, tail in tx.fetchall(
            "SELECT l.stream_id, s.path, l.by_glob, l.by_name, l.acked_seq, s.tail_seq "
            "FROM links l JOIN streams s ON s.id = l.stream_id WHERE l.sub_id = ? "
            "ORDER BY s.path",
            (sub_id,),
        )
    ]


def _subscription(tx: Transaction, sub: _SubRow) -> Subscription:
    return Subscription(
        id=sub.id,
        config=sub.config,
        streams=tuple(link.linked() for link in _links(tx, sub.id)),
        created_at_ms=sub.created_at_ms,
        generation=sub.generation,
        wake_id=sub.wake_id,
        holder=sub.holder,
        lease_expires_at_ms=sub.lease_expires_at_ms,
    )


# -- subscriptions: configuration ------------------------------------------------------------


def _link_stream(
    tx: Transaction, sub_id: str, stream_id: int, tail: int, *, by_glob: bool, by_name: bool
) -> None:
    """Link a stream at its tail, or add a reason to an existing link (keeping its cursor)."""
    tx.execute(
        "INSERT INTO links (sub_id, stream_id, by_glob, by_name, acked_seq) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (sub_id, stream_id) DO UPDATE SET "
        "by_glob = CASE WHEN excluded.by_glob = 1 THEN 1 ELSE links.by_glob END, "
        "by_name = CASE WHEN excluded.by_name = 1 THEN 1 ELSE links.by_name END",
        (sub_id, stream_id, int(by_glob), int(by_name), tail),
    )


def _link_at_tail(tx: Transaction, sub_id: str, path: str, *, by_glob: bool, by_name: bool) -> None:
    """Link an existing stream at its tail, read under the stream's row lock.

    The lock orders this against appends to the stream: an append either commits first (and
    its messages are behind the tail read here) or runs after and sees this link when it
    offers wakes. Without it, an append racing a new link could leave work nobody is woken
    for. A stream that does not exist is skipped.
    """
    row = _find_stream(tx, path, lock=True)
    if row is not None:
        _link_stream(tx, sub_id, row[0], int(row[3]), by_glob=by_glob, by_name=by_name)


def put_subscription(
    tx: Transaction, sub_id: str, config: SubscriptionConfig, now_ms: int
) -> tuple[bool, Subscription]:
    check_identifier(sub_id, "subscription id")
    config = normalise_config(config)
    _check_int(now_ms, "now_ms")
    config_json = _config_json(config)
    tx.lock_catalog()
    existing = _load_sub(tx, sub_id, lock=True)
    if existing is not None:
        if _config_json(existing.config) != config_json:
            raise Conflict(
                f"subscription {sub_id!r} already exists with another configuration: delete it "
                "first or use another id",
                code="SUBSCRIPTION_EXISTS",
            )
        return False, _subscription(tx, existing)
    wake = _find_stream(tx, config.wake_stream)
    if wake is None:
        _insert_stream(tx, config.wake_stream, WAKE_CONTENT_TYPE, now_ms)
    elif not is_json_content_type(wake[2]):
        raise BadRequest(
            f"wake stream {config.wake_stream!r} has content type {wake[2]!r}: wake events are "
            "JSON, so use an application/json stream",
            code="WAKE_STREAM_NOT_JSON",
        )
    tx.execute(
        "INSERT INTO subscriptions (id, config_json, wake_stream, pattern, lease_ttl_ms, "
        "created_at_ms, generation) VALUES (?, ?, ?, ?, ?, ?, 0)",
        (sub_id, config_json, config.wake_stream, config.pattern, config.lease_ttl_ms, now_ms),
    )
    for path in config.streams:
        tx.execute("INSERT INTO subscription_names (sub_id, path) VALUES (?, ?)", (sub_id, path))
    glob = compile_glob(config.pattern) if config.pattern is not None else None
    names = set(config.streams)
    for path in [path for (path,) in tx.fetchall("SELECT path FROM streams ORDER BY path")]:
        by_glob = glob is not None and path != config.wake_stream and glob.matches(path)
        by_name = path in names
        if by_glob or by_name:
            _link_at_tail(tx, sub_id, path, by_glob=by_glob, by_name=by_name)
    created = _require_sub(tx, sub_id, lock=False)
    return True, _subscription(tx, created)


def subscription(tx: Transaction, sub_id: str) -> Subscription:
    return _subscription(tx, _require_sub(tx, sub_id, lock=False))


def delete_subscription(tx: Transaction, sub_id: str) -> None:
    tx.lock_catalog()
    _require_sub(tx, sub_id, lock=True)
    tx.execute("DELETE FROM links WHERE sub_id = ?", (sub_id,))
    tx.execute("DELETE FROM subscription_names WHERE sub_id = ?", (sub_id,))
    tx.execute("DELETE FROM subscriptions WHERE id = ?", (sub_id,))


def add_streams(tx: Transaction, sub_id: str, paths: Sequence[str], now_ms: int) -> None:
    """Name streams explicitly; existing ones are linked at their tail, later ones on creation."""
    checked = sorted({check_path(path) for path in paths})
    _check_int(now_ms, "now_ms")
    tx.lock_catalog()
    _require_sub(tx, sub_id, lock=True)
    for path in checked:
        tx.execute(
            "INSERT INTO subscription_names (sub_id, path) VALUES (?, ?) "
            "ON CONFLICT (sub_id, path) DO NOTHING",
            (sub_id, path),
        )
        _link_at_tail(tx, sub_id, path, by_glob=False, by_name=True)


def remove_stream(tx: Transaction, sub_id: str, path: str, now_ms: int) -> None:
    """Drop an explicit link; a link the pattern also makes stays (as a glob link)."""
    check_path(path)
    _check_int(now_ms, "now_ms")
    tx.lock_catalog()
    _require_sub(tx, sub_id, lock=True)
    tx.execute("DELETE FROM subscription_names WHERE sub_id = ? AND path = ?", (sub_id, path))
    row = _find_stream(tx, path)
    if row is None:
        return
    tx.execute(
        "DELETE FROM links WHERE sub_id = ? AND stream_id = ? AND by_glob = 0", (sub_id, row[0])
    )
    tx.execute("UPDATE links SET by_name = 0 WHERE sub_id = ? AND stream_id = ?", (sub_id, row[0]))


# -- wakes, claims, acks ---------------------------------------------------------------------


def _new_wake_id() -> str:
    return secrets.token_urlsafe(12)


def _wake_event(sub_id: str, stream_path: str, generation: int, now_ms: int) -> bytes:
    event = {
        "type": "wake",
        "subscription_id": sub_id,
        "stream": stream_path,
        "generation": generation,
        "ts": now_ms,
    }
    return json.dumps(event, separators=(",", ":")).encode("utf-8")


def _mint_wake(tx: Transaction, sub_id: str, generation: int) -> tuple[int, str]:
    """Start a new generation with a new wake id and snapshot the linked tails."""
    generation += 1
    wake_id = _new_wake_id()
    tx.execute(
        "UPDATE subscriptions SET generation = ?, wake_id = ? WHERE id = ?",
        (generation, wake_id, sub_id),
    )
    tx.execute(
        "UPDATE links SET wake_tail_seq = "
        "(SELECT tail_seq FROM streams WHERE streams.id = links.stream_id) WHERE sub_id = ?",
        (sub_id,),
    )
    return generation, wake_id


def _append_wake(
    tx: Transaction, path: str, event: bytes, now_ms: int, wakes: list[tuple[str, bytes]]
) -> None:
    """Append a wake event; a wake stream deleted since is created again (as JSON)."""
    row = _find_stream(tx, path, lock=True)
    if row is None:
        tx.lock_catalog()
        _insert_stream(tx, path, WAKE_CONTENT_TYPE, now_ms)
        row = _find_stream(tx, path, lock=True)
        assert row is not None
    _append_rows(tx, row[0], path, [event])
    wakes.append((path, event))
    _wake_linked(tx, row[0], path, now_ms, wakes)


def _expire_lease(tx: Transaction, sub: _SubRow) -> None:
    tx.execute(
        "UPDATE subscriptions SET holder = NULL, lease_expires_at_ms = NULL, wake_id = NULL, "
        "expired_generation = generation WHERE id = ?",
        (sub.id,),
    )


def _maybe_wake(
    tx: Transaction,
    sub_id: str,
    now_ms: int,
    trigger: str | None,
    wakes: list[tuple[str, bytes]],
) -> bool:
    """Issue a wake if ``sub_id`` has pending work, no wake in flight and no live lease.

    A lapsed lease found here is cleared first. Returns True when a wake was issued.
    """
    sub = _load_sub(tx, sub_id, lock=True)
    if sub is None:
        return False
    if sub.lease_lapsed(now_ms):
        _expire_lease(tx, sub)
        sub = attrs.evolve(sub, holder=None, lease_expires_at_ms=None, wake_id=None)
    if sub.wake_id is not None or sub.holder is not None:
        return False
    pending = [link.path for link in _links(tx, sub_id) if link.tail > link.acked]
    if not pending:
        return False
    generation, _ = _mint_wake(tx, sub_id, sub.generation)
    stream_path = trigger if trigger in pending else pending[0]
    event = _wake_event(sub_id, stream_path, generation, now_ms)
    _append_wake(tx, sub.config.wake_stream, event, now_ms, wakes)
    return True


def claim(tx: Transaction, secret: str, sub_id: str, worker: str, now_ms: int) -> Claim:
    check_identifier(worker, "worker")
    _check_int(now_ms, "now_ms")
    sub = _require_sub(tx, sub_id, lock=True)
    if sub.lease_lapsed(now_ms):
        _expire_lease(tx, sub)
        _maybe_wake(tx, sub_id, now_ms, None, [])
        sub = _require_sub(tx, sub_id, lock=True)
    if sub.holder is not None:
        raise Conflict(
            f"subscription {sub_id!r} is claimed by {sub.holder!r} until its lease ends; wait "
            "for the next wake",
            code="ALREADY_CLAIMED",
            current_holder=sub.holder,
            generation=sub.generation,
        )
    links = _links(tx, sub_id)
    if not any(link.tail > link.acked for link in links):
        error = Conflict(
            f"subscription {sub_id!r} has no pending work: every linked stream is acked to "
            "its tail",
            code="NO_PENDING_WORK",
        )
        if sub.wake_id is not None:
            tx.execute("UPDATE subscriptions SET wake_id = NULL WHERE id = ?", (sub_id,))
            raise CommitThenRaise(error)
        raise error
    generation, wake_id = sub.generation, sub.wake_id
    if wake_id is None:
        generation, wake_id = _mint_wake(tx, sub_id, generation)
    ttl = sub.config.lease_ttl_ms
    tx.execute(
        "UPDATE subscriptions SET holder = ?, lease_expires_at_ms = ? WHERE id = ?",
        (worker, now_ms + ttl, sub_id),
    )
    token = sign_token(secret, TokenClaims(sub_id, generation, wake_id, worker))
    return Claim(wake_id, generation, token, tuple(link.linked() for link in links), ttl)


def _fenced(sub_id: str, why: str) -> Conflict:
    return Conflict(
        f"request for subscription {sub_id!r} is fenced: {why}; drop this work and wait for "
        "the next wake",
        code="FENCED",
    )


def _lease_expired(sub_id: str, generation: int) -> Unauthorized:
    return Unauthorized(
        f"the lease on subscription {sub_id!r} for generation {generation} expired before this "
        "request: ack more often than lease_ttl_ms, and claim again on the next wake",
        code="LEASE_EXPIRED",
    )


def _authorise(
    tx: Transaction,
    secret: str,
    sub_id: str,
    token: str,
    wake_id: str,
    generation: int,
    now_ms: int,
) -> _SubRow:
    """Check a holder's request against the current claim; return the locked subscription.

    401 ``INVALID_TOKEN`` (token unreadable or forged), 404 ``SUBSCRIPTION_NOT_FOUND``
    (deleted), 401 ``LEASE_EXPIRED`` (the token's lease lapsed: a lapsed lease found here is
    cleared and committed, re-waking pending work), 409 ``FENCED`` (anything else stale).
    """
    claims = verify_token(secret, token)
    _check_int(now_ms, "now_ms")
    sub = _require_sub(tx, sub_id, lock=True)
    if claims.subscription_id != sub_id:
        raise _fenced(sub_id, f"the token was issued for subscription {claims.subscription_id!r}")
    if sub.lease_lapsed(now_ms):
        lapsed_generation = sub.generation
        _expire_lease(tx, sub)
        _maybe_wake(tx, sub_id, now_ms, None, [])
        if claims.generation == lapsed_generation:
            raise CommitThenRaise(_lease_expired(sub_id, claims.generation))
        raise CommitThenRaise(_fenced(sub_id, f"generation {claims.generation} is not current"))
    # Every claim after an expiry gets a later generation, so this names the lapsed lease only.
    if claims.generation == sub.expired_generation:
        raise _lease_expired(sub_id, claims.generation)
    if (
        claims.generation != sub.generation
        or claims.wake_id != sub.wake_id
        or claims.worker != sub.holder
    ):
        raise _fenced(
            sub_id,
            f"the token is for generation {claims.generation}, the current one is "
            f"{sub.generation}" + ("" if sub.holder is not None else " and no lease is held"),
        )
    if generation != sub.generation or wake_id != sub.wake_id:
        raise _fenced(sub_id, "the body's generation or wake_id is not the current one")
    return sub


def _invalid_ack(why: str) -> Conflict:
    return Conflict(
        f"ack rejected, nothing applied: {why}; ack only offsets read from that stream",
        code="INVALID_ACK",
    )


def ack(
    tx: Transaction,
    secret: str,
    sub_id: str,
    token: str,
    wake_id: str,
    generation: int,
    acks: Sequence[AckItem],
    done: bool,
    now_ms: int,
) -> AckResult:
    sub = _authorise(tx, secret, sub_id, token, wake_id, generation, now_ms)
    links = {link.path: link for link in _links(tx, sub_id)}
    advanced: dict[str, int] = {}
    for item in acks:
        link = links.get(item.stream) if isinstance(item.stream, str) else None
        if link is None:
            raise _invalid_ack(f"stream {item.stream!r} is not linked to {sub_id!r}")
        if not isinstance(item.offset, str) or not is_offset(item.offset):
            raise _invalid_ack(f"offset {str(item.offset)[:64]!r} is not an offset")
        position = parse_offset(item.offset)
        if position < link.acked:
            raise _invalid_ack(
                f"offset {item.offset} of {item.stream!r} is before the committed cursor "
                f"{format_offset(link.acked)}"
            )
        if position > link.tail:
            raise _invalid_ack(
                f"offset {item.offset} of {item.stream!r} is past its tail "
                f"{format_offset(link.tail)}"
            )
        if position not in (link.acked, link.tail) and (
            tx.fetchone(
                "SELECT 1 FROM messages WHERE stream_id = ? AND seq = ?", (link.stream_id, position)
            )
            is None
        ):
            raise _invalid_ack(f"offset {item.offset} is not a message offset of {item.stream!r}")
        advanced[item.stream] = max(advanced.get(item.stream, link.acked), position)
    for path, position in advanced.items():
        tx.execute(
            "UPDATE links SET acked_seq = ? WHERE sub_id = ? AND stream_id = ? AND acked_seq < ?",
            (position, sub_id, links[path].stream_id, position),
        )
    if not done:
        tx.execute(
            "UPDATE subscriptions SET lease_expires_at_ms = ? WHERE id = ?",
            (now_ms + sub.config.lease_ttl_ms, sub_id),
        )
        return AckResult(next_wake=False)
    _end_claim(tx, sub_id)
    return AckResult(next_wake=_maybe_wake(tx, sub_id, now_ms, None, []))


def _end_claim(tx: Transaction, sub_id: str) -> None:
    tx.execute(
        "UPDATE subscriptions SET holder = NULL, lease_expires_at_ms = NULL, wake_id = NULL "
        "WHERE id = ?",
        (sub_id,),
    )


def release(
    tx: Transaction,
    secret: str,
    sub_id: str,
    token: str,
    wake_id: str,
    generation: int,
    now_ms: int,
) -> None:
    _authorise(tx, secret, sub_id, token, wake_id, generation, now_ms)
    _end_claim(tx, sub_id)
    _maybe_wake(tx, sub_id, now_ms, None, [])


def expire_leases(tx: Transaction, now_ms: int) -> int:
    _check_int(now_ms, "now_ms")
    expired = 0
    for (sub_id,) in tx.fetchall(
        "SELECT id FROM subscriptions WHERE holder IS NOT NULL AND lease_expires_at_ms <= ? "
        "ORDER BY id" + tx.row_lock + tx.skip_locked,
        (now_ms,),
    ):
        sub = _load_sub(tx, sub_id, lock=True)
        if sub is None or not sub.lease_lapsed(now_ms):
            continue
        _expire_lease(tx, sub)
        _maybe_wake(tx, sub_id, now_ms, None, [])
        expired += 1
    return expired


def claims_held_by(tx: Transaction, worker: str) -> tuple[Subscription, ...]:
    subs = []
    for (sub_id,) in tx.fetchall(
        "SELECT id FROM subscriptions WHERE holder = ? ORDER BY id", (worker,)
    ):
        sub = _load_sub(tx, sub_id, lock=False)
        if sub is not None:
            subs.append(_subscription(tx, sub))
    return tuple(subs)


# -- runner registry -------------------------------------------------------------------------

_RUNNER_COLUMNS = (
    "id, label, wake_stream, wake_stream_offset, registered_at_ms, last_heartbeat_at_ms, "
    "lease_ms, diagnostics_json"
)


def _runner(row: tuple[Any, ...]) -> Runner:
    return Runner(
        id=row[0],
        label=row[1],
        wake_stream=row[2],
        wake_stream_offset=row[3],
        registered_at_ms=row[4],
        last_heartbeat_at_ms=row[5],
        lease_ms=row[6],
        diagnostics=json.loads(row[7]),
    )


def _runner_not_found(runner_id: str) -> NotFound:
    return NotFound(
        f"runner {runner_id!r} is not registered: register it again with POST /v1/runners",
        code="RUNNER_NOT_FOUND",
    )


def register_runner(
    tx: Transaction, runner_id: str, label: str | None, wake_stream: str | None, now_ms: int
) -> tuple[bool, Runner]:
    check_identifier(runner_id, "runner id")
    if label is not None and (not isinstance(label, str) or len(label) > MAX_DESCRIPTION_CHARS):
        raise BadRequest(f"label must be text of at most {MAX_DESCRIPTION_CHARS} characters")
    if wake_stream is not None:
        check_path(wake_stream, "wake_stream")
    _check_int(now_ms, "now_ms")
    inserted = tx.fetchone(
        "INSERT INTO runners (id, label, wake_stream, registered_at_ms, diagnostics_json) "
        "VALUES (?, ?, ?, ?, '{}') ON CONFLICT (id) DO NOTHING RETURNING id",
        (runner_id, label, wake_stream, now_ms),
    )
    if inserted is None:
        tx.execute(
            "UPDATE runners SET label = ?, wake_stream = ? WHERE id = ?",
            (label, wake_stream, runner_id),
        )
    row = tx.fetchone(f"SELECT {_RUNNER_COLUMNS} FROM runners WHERE id = ?", (runner_id,))
    assert row is not None
    return inserted is not None, _runner(row)


def heartbeat(
    tx: Transaction,
    runner_id: str,
    lease_ms: int,
    wake_stream_offset: str | None,
    diagnostics: dict[str, object],
    now_ms: int,
) -> Runner:
    _check_int(lease_ms, "lease_ms", 1)
    _check_int(now_ms, "now_ms")
    if wake_stream_offset is not None and (
        not isinstance(wake_stream_offset, str) or not 0 < len(wake_stream_offset) <= 256
    ):
        raise BadRequest("wake_stream_offset must be an offset string (1 to 256 characters)")
    if not isinstance(diagnostics, dict):
        raise BadRequest("diagnostics must be a JSON object")
    try:
        diagnostics_json = json.dumps(diagnostics, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"diagnostics must be plain JSON: {exc}") from exc
    if len(diagnostics_json) > MAX_DIAGNOSTICS_CHARS:
        raise BadRequest(
            f"diagnostics are {len(diagnostics_json)} characters as JSON; keep them under "
            f"{MAX_DIAGNOSTICS_CHARS}"
        )
    row = tx.fetchone(
        "UPDATE runners SET lease_ms = ?, last_heartbeat_at_ms = ?, diagnostics_json = ?, "
        "wake_stream_offset = COALESCE(?, wake_stream_offset) WHERE id = ? "
        f"RETURNING {_RUNNER_COLUMNS}",
        (lease_ms, now_ms, diagnostics_json, wake_stream_offset, runner_id),
    )
    if row is None:
        raise _runner_not_found(runner_id)
    return _runner(row)


def runner(tx: Transaction, runner_id: str) -> Runner:
    row = tx.fetchone(f"SELECT {_RUNNER_COLUMNS} FROM runners WHERE id = ?", (runner_id,))
    if row is None:
        raise _runner_not_found(runner_id)
    return _runner(row)


# -- setup -----------------------------------------------------------------------------------


def load_secret(tx: Transaction, fresh: str) -> str:
    """Return the stored token-signing secret, storing ``fresh`` if there is none yet."""
    tx.execute(
        "INSERT INTO settings (key, value) VALUES ('token_secret', ?) ON CONFLICT (key) DO NOTHING",
        (fresh,),
    )
    row = tx.fetchone("SELECT value FROM settings WHERE key = 'token_secret'")
    assert row is not None
    return str(row[0])
