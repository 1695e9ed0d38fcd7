"""Subscription rules: configuration, loading, and the links that join a subscription to streams.

A link joins a subscription to a stream with an acked position; the subscription has pending
work when some link's tail is past its acked position. Operations that change which streams a
subscription covers take :meth:`Transaction.lock_catalog`, so a stream created while a
subscription is created can never miss its link.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence

import attrs

from pullwake.server.content_types import is_json
from pullwake.server.errors import BadRequest, Conflict, NotFound
from pullwake.server.names import (
    MAX_DESCRIPTION_CHARS,
    MAX_LEASE_TTL_MS,
    MIN_LEASE_TTL_MS,
    check_identifier,
    check_path,
    compile_glob,
)
from pullwake.server.store.base import LinkedStream, Subscription, SubscriptionConfig
from pullwake.server.store.offsets import format_offset
from pullwake.server.store.rules.catalog import WAKE_CONTENT_TYPE, find_stream, insert_stream
from pullwake.server.store.rules.transaction import Transaction, check_int
from pullwake.server.store.rules.wake_table import WakeState


def normalise_config(config: SubscriptionConfig) -> SubscriptionConfig:
    """Validate a subscription's configuration and return it normalised.

    Streams are sorted and de-duplicated; ``lease_ttl_ms`` must be 1000..600000. Raises
    ``BadRequest`` (``INVALID_SUBSCRIPTION``, ``INVALID_PATH``, ``INVALID_PATTERN``).
    """
    if config.type == "webhook":
        if not isinstance(config.webhook_url, str) or not config.webhook_url:
            raise BadRequest(
                "a webhook subscription needs a webhook URL", code="INVALID_SUBSCRIPTION"
            )
        if config.wake_stream != "":
            raise BadRequest(
                "a webhook subscription has no wake stream", code="INVALID_SUBSCRIPTION"
            )
    elif config.type == "pull-wake":
        if config.webhook_url is not None:
            raise BadRequest(
                "a pull-wake subscription has no webhook URL", code="INVALID_SUBSCRIPTION"
            )
        check_path(config.wake_stream, "wake_stream")
    else:
        raise BadRequest(
            f"subscription type {config.type!r} is not served: use 'pull-wake' or 'webhook'",
            code="INVALID_SUBSCRIPTION",
        )
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


@functools.lru_cache(maxsize=4096)
def _config_from_json(text: str) -> SubscriptionConfig:
    # Cached by text: every append, claim and ack loads a subscription, and its configuration
    # (frozen, so safe to share) changes only when the subscription is written again.
    fields = json.loads(text)
    fields["streams"] = tuple(fields["streams"])
    return SubscriptionConfig(**fields)


_SUB_COLUMNS = (
    "id, config_json, created_at_ms, generation, wake_id, holder, lease_expires_at_ms, "
    "expired_generation"
)


@attrs.frozen
class SubRow:
    id: str
    config: SubscriptionConfig
    created_at_ms: int
    generation: int
    wake_id: str | None
    holder: str | None
    lease_expires_at_ms: int | None
    expired_generation: int | None

    def wake_state(self) -> WakeState:
        """Return the wake and lease columns as the wake table reads them."""
        return WakeState(
            self.generation,
            self.wake_id,
            self.holder,
            self.lease_expires_at_ms,
            self.expired_generation,
        )


@attrs.frozen
class Link:
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


def load_sub(tx: Transaction, sub_id: str, *, lock: bool) -> SubRow | None:
    row = tx.fetchone(
        f"SELECT {_SUB_COLUMNS} FROM subscriptions WHERE id = ?" + (tx.row_lock if lock else ""),
        (sub_id,),
    )
    if row is None:
        return None
    return SubRow(row[0], _config_from_json(row[1]), *row[2:])


def load_sub_links(tx: Transaction, sub_id: str) -> tuple[SubRow, list[Link]] | None:
    """Lock ``sub_id`` and return it with its links (as :func:`load_links`).

    Two statements, on purpose: where a statement that waited for the row lock reads other
    tables as they were before the wait (:attr:`Transaction.stale_joins_after_lock`, as on
    PostgreSQL), one joined read would miss the links and tails the lock holder just wrote,
    and a claim that waited for an append would answer "no pending work" for its message.
    (On SQLite the join was measured too: 3 statements fewer per wake cycle, no CPU gain
    within the benchmark's noise; ``test_store_postgres_lock_waits.py``.)
    """
    sub = load_sub(tx, sub_id, lock=True)
    return None if sub is None else (sub, load_links(tx, sub_id))


def require_sub_links(tx: Transaction, sub_id: str) -> tuple[SubRow, list[Link]]:
    """:func:`load_sub_links`, or 404 ``SUBSCRIPTION_NOT_FOUND``."""
    found = load_sub_links(tx, sub_id)
    if found is None:
        raise _sub_not_found(sub_id)
    return found


def _sub_not_found(sub_id: str) -> NotFound:
    return NotFound(
        f"subscription {sub_id!r} does not exist (never created, or deleted): create it with "
        "PUT, then claim again",
        code="SUBSCRIPTION_NOT_FOUND",
    )


def require_sub(tx: Transaction, sub_id: str, *, lock: bool) -> SubRow:
    sub = load_sub(tx, sub_id, lock=lock)
    if sub is None:
        raise _sub_not_found(sub_id)
    return sub


def load_links(tx: Transaction, sub_id: str) -> list[Link]:
    return [
        Link(stream_id, path, bool(by_glob), bool(by_name), int(acked), int(tail))
        for stream_id, path, by_glob, by_name, acked, tail in tx.fetchall(
            "SELECT l.stream_id, s.path, l.by_glob, l.by_name, l.acked_seq, s.tail_seq "
            "FROM links l JOIN streams s ON s.id = l.stream_id WHERE l.sub_id = ? "
            "ORDER BY s.path",
            (sub_id,),
        )
    ]


def _named_only(tx: Transaction, sub_id: str, linked: set[str]) -> list[LinkedStream]:
    """Return the explicit names whose stream does not exist (yet): shown as explicit links at
    the start, where the stream's link begins once it is created."""
    start = format_offset(0)
    return [
        LinkedStream(path, "explicit", start, start)
        for (path,) in tx.fetchall(
            "SELECT path FROM subscription_names WHERE sub_id = ? ORDER BY path", (sub_id,)
        )
        if path not in linked
    ]


def subscription_view(tx: Transaction, sub: SubRow) -> Subscription:
    links = [link.linked() for link in load_links(tx, sub.id)]
    links += _named_only(tx, sub.id, {link.path for link in links})
    return Subscription(
        id=sub.id,
        config=sub.config,
        streams=tuple(sorted(links, key=lambda link: link.path)),
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
    row = find_stream(tx, path, lock=True)
    if row is not None:
        _link_stream(tx, sub_id, row[0], int(row[3]), by_glob=by_glob, by_name=by_name)


def put_subscription(
    tx: Transaction, sub_id: str, config: SubscriptionConfig, now_ms: int
) -> tuple[bool, Subscription]:
    check_identifier(sub_id, "subscription id")
    config = normalise_config(config)
    check_int(now_ms, "now_ms")
    config_json = _config_json(config)
    tx.lock_catalog()
    existing = load_sub(tx, sub_id, lock=True)
    if existing is not None:
        if _config_json(existing.config) != config_json:
            raise Conflict(
                f"subscription {sub_id!r} already exists with another configuration: delete it "
                "first or use another id",
                code="SUBSCRIPTION_EXISTS",
            )
        return False, subscription_view(tx, existing)
    wake = find_stream(tx, config.wake_stream) if config.type == "pull-wake" else None
    if wake is None and config.type == "pull-wake":
        insert_stream(tx, config.wake_stream, WAKE_CONTENT_TYPE, now_ms)
    elif wake is not None and not is_json(wake[2]):
        raise BadRequest(
            f"wake stream {config.wake_stream!r} has content type {wake[2]!r}: wake events are "
            "JSON, so use an application/json stream",
            code="WAKE_STREAM_NOT_JSON",
        )
    tx.execute(
        "INSERT INTO subscriptions (id, config_json, wake_stream, pattern, lease_ttl_ms, "
        "created_at_ms, generation, webhook_url) VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
        (
            sub_id,
            config_json,
            config.wake_stream,
            config.pattern,
            config.lease_ttl_ms,
            now_ms,
            config.webhook_url,
        ),
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
    created = require_sub(tx, sub_id, lock=False)
    return True, subscription_view(tx, created)


def subscription(tx: Transaction, sub_id: str) -> Subscription:
    return subscription_view(tx, require_sub(tx, sub_id, lock=False))


def delete_subscription(tx: Transaction, sub_id: str) -> None:
    tx.lock_catalog()
    require_sub(tx, sub_id, lock=True)
    tx.execute("DELETE FROM links WHERE sub_id = ?", (sub_id,))
    tx.execute("DELETE FROM subscription_names WHERE sub_id = ?", (sub_id,))
    tx.execute("DELETE FROM subscriptions WHERE id = ?", (sub_id,))


def add_streams(tx: Transaction, sub_id: str, paths: Sequence[str], now_ms: int) -> None:
    """Name streams explicitly; existing ones are linked at their tail, later ones on creation."""
    checked = sorted({check_path(path) for path in paths})
    check_int(now_ms, "now_ms")
    tx.lock_catalog()
    require_sub(tx, sub_id, lock=True)
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
    check_int(now_ms, "now_ms")
    tx.lock_catalog()
    require_sub(tx, sub_id, lock=True)
    tx.execute("DELETE FROM subscription_names WHERE sub_id = ? AND path = ?", (sub_id, path))
    row = find_stream(tx, path)
    if row is None:
        return
    tx.execute(
        "DELETE FROM links WHERE sub_id = ? AND stream_id = ? AND by_glob = 0", (sub_id, row[0])
    )
    tx.execute("UPDATE links SET by_name = 0 WHERE sub_id = ? AND stream_id = ?", (sub_id, row[0]))
