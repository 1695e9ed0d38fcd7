"""Wake and lease rules: issuing wakes, claims, acks, releases and lease expiry.

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

import attrs

from pullwake.server.errors import Conflict, Unauthorized
from pullwake.server.store.base import AckItem, AckResult, Claim, Subscription
from pullwake.server.store.offsets import format_offset, is_offset, parse_offset
from pullwake.server.store.paths import check_identifier
from pullwake.server.store.rules.catalog import (
    WAKE_CONTENT_TYPE,
    append_rows,
    find_stream,
    insert_stream,
)
from pullwake.server.store.rules.subscriptions import (
    SubRow,
    load_links,
    load_sub,
    require_sub,
    subscription_view,
)
from pullwake.server.store.rules.transaction import CommitThenRaise, Transaction, check_int
from pullwake.server.store.tokens import TokenClaims, sign_token, verify_token


def wake_linked(
    tx: Transaction, stream_id: int, path: str, now_ms: int, wakes: list[tuple[str, bytes]]
) -> None:
    """Offer a wake to every subscription linked to a stream that was just appended to."""
    for (sub_id,) in tx.fetchall(
        "SELECT sub_id FROM links WHERE stream_id = ? ORDER BY sub_id", (stream_id,)
    ):
        maybe_wake(tx, sub_id, now_ms, path, wakes)


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
    row = find_stream(tx, path, lock=True)
    if row is None:
        tx.lock_catalog()
        insert_stream(tx, path, WAKE_CONTENT_TYPE, now_ms)
        row = find_stream(tx, path, lock=True)
        assert row is not None
    append_rows(tx, row[0], path, [event])
    wakes.append((path, event))
    wake_linked(tx, row[0], path, now_ms, wakes)


def _takes_events(tx: Transaction, path: str) -> bool:
    """Tell whether wake events can go to ``path``: not when it is closed or soft-deleted
    (work then waits, unwoken, until it is deleted, when it is created again on the next
    wake); a missing wake stream is created again."""
    row = tx.fetchone("SELECT closed, deleted FROM streams WHERE path = ?", (path,))
    return row is None or not (row[0] or row[1])


def _expire_lease(tx: Transaction, sub: SubRow) -> None:
    tx.execute(
        "UPDATE subscriptions SET holder = NULL, lease_expires_at_ms = NULL, wake_id = NULL, "
        "expired_generation = generation WHERE id = ?",
        (sub.id,),
    )


def maybe_wake(
    tx: Transaction,
    sub_id: str,
    now_ms: int,
    trigger: str | None,
    wakes: list[tuple[str, bytes]],
) -> bool:
    """Issue a wake if ``sub_id`` has pending work, no wake in flight and no live lease.

    A lapsed lease found here is cleared first. Returns True when a wake was issued.
    """
    sub = load_sub(tx, sub_id, lock=True)
    if sub is None:
        return False
    if sub.lease_lapsed(now_ms):
        _expire_lease(tx, sub)
        sub = attrs.evolve(sub, holder=None, lease_expires_at_ms=None, wake_id=None)
    if sub.wake_id is not None or sub.holder is not None:
        return False
    pending = [link.path for link in load_links(tx, sub_id) if link.tail > link.acked]
    if not pending or not _takes_events(tx, sub.config.wake_stream):
        return False
    generation, _ = _mint_wake(tx, sub_id, sub.generation)
    stream_path = trigger if trigger in pending else pending[0]
    event = _wake_event(sub_id, stream_path, generation, now_ms)
    _append_wake(tx, sub.config.wake_stream, event, now_ms, wakes)
    return True


def claim(tx: Transaction, secret: str, sub_id: str, worker: str, now_ms: int) -> Claim:
    check_identifier(worker, "worker")
    check_int(now_ms, "now_ms")
    sub = require_sub(tx, sub_id, lock=True)
    if sub.lease_lapsed(now_ms):
        _expire_lease(tx, sub)
        maybe_wake(tx, sub_id, now_ms, None, [])
        sub = require_sub(tx, sub_id, lock=True)
    if sub.holder is not None:
        raise Conflict(
            f"subscription {sub_id!r} is claimed by {sub.holder!r} until its lease ends; wait "
            "for the next wake",
            code="ALREADY_CLAIMED",
            current_holder=sub.holder,
            generation=sub.generation,
        )
    links = load_links(tx, sub_id)
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
) -> SubRow:
    """Check a holder's request against the current claim; return the locked subscription.

    401 ``INVALID_TOKEN`` (token unreadable or forged), 404 ``SUBSCRIPTION_NOT_FOUND``
    (deleted), 401 ``LEASE_EXPIRED`` (the token's lease lapsed: a lapsed lease found here is
    cleared and committed, re-waking pending work), 409 ``FENCED`` (anything else stale).
    """
    claims = verify_token(secret, token)
    check_int(now_ms, "now_ms")
    sub = require_sub(tx, sub_id, lock=True)
    if claims.subscription_id != sub_id:
        raise _fenced(sub_id, f"the token was issued for subscription {claims.subscription_id!r}")
    if sub.lease_lapsed(now_ms):
        lapsed_generation = sub.generation
        _expire_lease(tx, sub)
        maybe_wake(tx, sub_id, now_ms, None, [])
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
    links = {link.path: link for link in load_links(tx, sub_id)}
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
    return AckResult(next_wake=maybe_wake(tx, sub_id, now_ms, None, []))


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
    maybe_wake(tx, sub_id, now_ms, None, [])


def expire_leases(tx: Transaction, now_ms: int) -> int:
    check_int(now_ms, "now_ms")
    expired = 0
    for (sub_id,) in tx.fetchall(
        "SELECT id FROM subscriptions WHERE holder IS NOT NULL AND lease_expires_at_ms <= ? "
        "ORDER BY id" + tx.row_lock + tx.skip_locked,
        (now_ms,),
    ):
        sub = load_sub(tx, sub_id, lock=True)
        if sub is None or not sub.lease_lapsed(now_ms):
            continue
        _expire_lease(tx, sub)
        maybe_wake(tx, sub_id, now_ms, None, [])
        expired += 1
    return expired


def claims_held_by(tx: Transaction, worker: str) -> tuple[Subscription, ...]:
    subs = []
    for (sub_id,) in tx.fetchall(
        "SELECT id FROM subscriptions WHERE holder = ? ORDER BY id", (worker,)
    ):
        sub = load_sub(tx, sub_id, lock=False)
        if sub is not None:
            subs.append(subscription_view(tx, sub))
    return tuple(subs)
