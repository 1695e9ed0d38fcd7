"""Wake and lease rules: issuing wakes, claims, acks, releases and lease expiry.

What happens to a subscription's wake and lease columns is decided by the pure table in
``wake_table.py`` (its docstring lists the phases and what may never happen); the rules here
load the row and the links, ask :func:`wake_table.decide`, and apply the decision in SQL
(:func:`_apply`). Acked positions are the one invariant kept here: they never move backwards,
and never past the tail.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence

import attrs

from pullwake.server.errors import Conflict, StoreError, Unauthorized
from pullwake.server.names import check_identifier
from pullwake.server.store.base import AckItem, AckResult, Claim, ExpiredLease, Subscription
from pullwake.server.store.offsets import format_offset, is_offset, parse_offset
from pullwake.server.store.rules import wake_table
from pullwake.server.store.rules.catalog import (
    WAKE_CONTENT_TYPE,
    append_rows,
    find_stream,
    insert_stream,
)
from pullwake.server.store.rules.subscriptions import (
    Link,
    SubRow,
    load_links,
    load_sub,
    require_sub_links,
    subscription_view,
)
from pullwake.server.store.rules.transaction import CommitThenRaise, Transaction, check_int
from pullwake.server.store.rules.webhooks import WEBHOOK_WORKER
from pullwake.server.store.tokens import TokenClaims, sign_token, verify_token


def wake_linked(
    tx: Transaction, stream_id: int, path: str, now_ms: int, wakes: list[tuple[str, bytes]]
) -> None:
    """Offer a wake to every subscription linked to a stream that was just appended to."""
    for (sub_id,) in tx.fetchall(
        "SELECT sub_id FROM links WHERE stream_id = ? ORDER BY sub_id", (stream_id,)
    ):
        maybe_wake(tx, sub_id, now_ms, path, wakes)


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
    return sub is not None and _offer_wake(tx, sub, now_ms, trigger, wakes)


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


@attrs.frozen
class WakeTarget:
    """A live wake stream, as :func:`_wake_target` found (and locked) it."""

    id: int
    #: Whether some subscription is linked to the wake stream itself (rarely so).
    linked: bool


def _append_wake(
    tx: Transaction,
    path: str,
    event: bytes,
    now_ms: int,
    wakes: list[tuple[str, bytes]],
    target: WakeTarget | None = None,
) -> None:
    """Append a wake event; a wake stream deleted since is created again (as JSON).

    ``target`` is the wake stream as the decision found it, in this transaction: then it is
    not read again.
    """
    if target is None:
        row = find_stream(tx, path, lock=True)
        if row is None:
            tx.lock_catalog()
            insert_stream(tx, path, WAKE_CONTENT_TYPE, now_ms)
            row = find_stream(tx, path, lock=True)
            assert row is not None
        target = WakeTarget(row[0], linked=True)
    append_rows(tx, target.id, path, [event])
    wakes.append((path, event))
    if target.linked:
        wake_linked(tx, target.id, path, now_ms, wakes)


def _pending_paths(links: Sequence[Link]) -> list[str]:
    return [link.path for link in links if link.tail > link.acked]


def _wake_target(tx: Transaction, path: str) -> WakeTarget | bool:
    """Tell whether wake events can go to ``path``: not (False) when it is closed or
    soft-deleted (work then waits, unwoken, until it is deleted, when it is created again on
    the next wake); True when it is missing (created again). A live one is returned locked,
    with whether anything is linked to it, so the wake's append need not read it again."""
    row = tx.fetchone(
        "SELECT id, closed, deleted, "
        "EXISTS (SELECT 1 FROM links WHERE links.stream_id = streams.id) "
        "FROM streams WHERE path = ?" + tx.row_lock,
        (path,),
    )
    if row is None:
        return True
    if row[1] or row[2]:
        return False
    # After a wait for the lock the links may be stale (see Transaction.stale_joins_after_lock):
    # then whoever is linked is read again after the append.
    return WakeTarget(int(row[0]), linked=bool(row[3]) or tx.stale_joins_after_lock)


def _event(
    tx: Transaction,
    sub: SubRow,
    kind: wake_table.EventKind,
    now_ms: int,
    *,
    links: Sequence[Link] | None = None,
    worker: str | None = None,
    credentials: wake_table.Credentials | None = None,
) -> tuple[wake_table.Event, list[str], WakeTarget | None]:
    """Build the table's event, reading the links only when the decision depends on them.

    Also return the wake stream when it was read for the decision (see :func:`_wake_target`).
    """
    pending: list[str] = []
    known: bool | None = None
    target: WakeTarget | None = None
    if wake_table.needs_pending(sub.wake_state(), kind, now_ms):
        pending = _pending_paths(load_links(tx, sub.id) if links is None else links)
        if pending and kind != "claim" and sub.config.type == "pull-wake":
            takes = _wake_target(tx, sub.config.wake_stream)
            if takes is False:
                # A closed or soft-deleted wake stream takes no event: the work waits unwoken
                # (a claim still finds it).
                pending = []
            elif isinstance(takes, WakeTarget):
                target = takes
        known = bool(pending)
    event = wake_table.Event(
        kind,
        now_ms,
        pending=known,
        fresh_wake_id=_new_wake_id(),
        worker=worker,
        lease_ttl_ms=sub.config.lease_ttl_ms,
        credentials=credentials,
    )
    return event, pending, target


def _apply(
    tx: Transaction,
    sub: SubRow,
    decision: wake_table.Decision,
    now_ms: int,
    *,
    pending: Sequence[str],
    trigger: str | None = None,
    wakes: list[tuple[str, bytes]] | None = None,
    target: WakeTarget | None = None,
) -> wake_table.Decision:
    """Write a decision: the row, the tail snapshot of a new generation, its wake event.

    A refusal is raised last: as :class:`CommitThenRaise` when the decision changed the row
    (a lapsed lease cleared, a stale wake dropped), as a plain error (nothing applied) when not.
    """
    new = decision.state
    changed = new != sub.wake_state()
    if changed:
        tx.execute(
            "UPDATE subscriptions SET generation = ?, wake_id = ?, holder = ?, "
            "lease_expires_at_ms = ?, expired_generation = ? WHERE id = ?",
            (
                new.generation,
                new.wake_id,
                new.holder,
                new.lease_expires_at_ms,
                new.expired_generation,
                sub.id,
            ),
        )
    # (links.wake_tail_seq, in the schema since migration 0001, is not written: nothing reads
    # it, and keeping it cost a statement per wake.)
    if decision.wake_event and sub.config.type == "pull-wake":
        # A webhook wake has no wake stream: the delivery loop finds it (``webhooks.py``).
        stream_path = trigger if trigger is not None and trigger in pending else pending[0]
        event = _wake_event(sub.id, stream_path, new.generation, now_ms)
        _append_wake(
            tx, sub.config.wake_stream, event, now_ms, [] if wakes is None else wakes, target
        )
    if decision.refusal is not None:
        error = _refusal_error(sub, decision.refusal)
        if changed:
            raise CommitThenRaise(error)
        raise error
    return decision


def _refusal_error(sub: SubRow, refusal: wake_table.Refusal) -> StoreError:
    if refusal.code == "ALREADY_CLAIMED":
        return Conflict(
            f"subscription {sub.id!r} is claimed by {sub.holder!r} until its lease ends; wait "
            "for the next wake",
            code="ALREADY_CLAIMED",
            current_holder=sub.holder,
            generation=sub.generation,
        )
    if refusal.code == "NO_PENDING_WORK":
        return Conflict(
            f"subscription {sub.id!r} has no pending work: every linked stream is acked to "
            "its tail",
            code="NO_PENDING_WORK",
        )
    if refusal.code == "LEASE_EXPIRED":
        return _lease_expired(sub.id, refusal.generation)
    return _fenced(sub.id, refusal.why)


def _offer_wake(
    tx: Transaction,
    sub: SubRow,
    now_ms: int,
    trigger: str | None,
    wakes: list[tuple[str, bytes]] | None = None,
    *,
    links: Sequence[Link] | None = None,
) -> bool:
    """Issue a wake if ``sub`` has pending work, no wake in flight and no live lease.

    A lapsed lease found here is cleared first. Returns True when a wake was issued.
    """
    event, pending, target = _event(tx, sub, "append", now_ms, links=links)
    decision = wake_table.decide(sub.wake_state(), event)
    _apply(tx, sub, decision, now_ms, pending=pending, trigger=trigger, wakes=wakes, target=target)
    return decision.wake_event


def claim(tx: Transaction, secret: str, sub_id: str, worker: str, now_ms: int) -> Claim:
    check_identifier(worker, "worker")
    check_int(now_ms, "now_ms")
    sub, links = require_sub_links(tx, sub_id)
    if sub.config.type == "webhook" and worker != WEBHOOK_WORKER:
        raise Conflict(
            f"subscription {sub_id!r} is a webhook subscription: the server delivers its wakes "
            "to its URL, so nobody claims them; ack a delivery through its callback_url",
            code="WEBHOOK_SUBSCRIPTION",
        )
    event, pending, target = _event(tx, sub, "claim", now_ms, links=links, worker=worker)
    decision = _apply(
        tx, sub, wake_table.decide(sub.wake_state(), event), now_ms, pending=pending, target=target
    )
    if decision.wake_event:
        links = load_links(tx, sub_id)
    state = decision.state
    assert state.wake_id is not None
    token = sign_token(secret, TokenClaims(sub_id, state.generation, state.wake_id, worker))
    return Claim(
        state.wake_id,
        state.generation,
        token,
        tuple(link.linked() for link in links),
        sub.config.lease_ttl_ms,
    )


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
    kind: wake_table.EventKind,
    sub_id: str,
    token: str,
    wake_id: str,
    generation: int,
    now_ms: int,
) -> tuple[SubRow, list[Link], wake_table.Credentials]:
    """Check a holder's request against the current claim; return the locked subscription
    and its links.

    401 ``INVALID_TOKEN`` (token unreadable or forged), 404 ``SUBSCRIPTION_NOT_FOUND``
    (deleted), 401 ``LEASE_EXPIRED`` (the token's lease lapsed: a lapsed lease found here is
    cleared and committed, re-waking pending work), 409 ``FENCED`` (anything else stale).
    A refusal never depends on pending work, so it is decided here, before any ack applies.
    """
    claims = verify_token(secret, token)
    check_int(now_ms, "now_ms")
    sub, links = require_sub_links(tx, sub_id)
    if claims.subscription_id != sub_id:
        raise _fenced(sub_id, f"the token was issued for subscription {claims.subscription_id!r}")
    credentials = wake_table.Credentials(
        claims.generation, claims.wake_id, claims.worker, generation, wake_id
    )
    if wake_table.refusal_for(sub.wake_state(), credentials, now_ms) is not None:
        event, pending, target = _event(tx, sub, kind, now_ms, links=links, credentials=credentials)
        _apply(
            tx,
            sub,
            wake_table.decide(sub.wake_state(), event),
            now_ms,
            pending=pending,
            target=target,
        )
        raise AssertionError("the wake table let through a refused request")
    return sub, links, credentials


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
    claim_next_worker: str | None = None,
) -> AckResult:
    """Apply acks; with ``done`` end the claim. With ``claim_next_worker`` too (the
    ``claim-next`` extension) pending work is claimed for that worker here, in this
    transaction, instead of being woken: the wake event nobody would need is not appended."""
    kind: wake_table.EventKind = "done" if done else "ack"
    if claim_next_worker is not None:
        check_identifier(claim_next_worker, "worker")
    sub, loaded, credentials = _authorise(
        tx, secret, kind, sub_id, token, wake_id, generation, now_ms
    )
    links = {link.path: link for link in loaded}
    advanced: dict[str, int] = {}
    for item in acks:
        link = links.get(item.stream) if isinstance(item.stream, str) else None
        if link is None:
            raise _invalid_ack(f"stream {item.stream!r} is not linked to {sub_id!r}")
        if not isinstance(item.offset, str) or not is_offset(item.offset):
            raise _invalid_ack(f"offset {str(item.offset)[:64]!r} is not an offset")
        position = parse_offset(item.offset)
        moved = wake_table.acked_after(link.acked, link.tail, position)
        if moved == "behind":
            raise _invalid_ack(
                f"offset {item.offset} of {item.stream!r} is before the committed cursor "
                f"{format_offset(link.acked)}"
            )
        if moved == "past_tail":
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
        assert isinstance(moved, int)
        advanced[item.stream] = max(advanced.get(item.stream, link.acked), moved)
    for path, position in advanced.items():
        tx.execute(
            "UPDATE links SET acked_seq = ? WHERE sub_id = ? AND stream_id = ? AND acked_seq < ?",
            (position, sub_id, links[path].stream_id, position),
        )
    after = [
        attrs.evolve(link, acked=advanced.get(path, link.acked)) for path, link in links.items()
    ]
    event, pending, target = _event(tx, sub, kind, now_ms, links=after, credentials=credentials)
    decision = wake_table.decide(sub.wake_state(), event)
    if (
        claim_next_worker is not None
        and done
        and decision.wake_event
        and sub.config.type == "pull-wake"
    ):
        # The table minted the next generation for pending work; write it without its wake
        # event (the table's "woken" phase, seen by nobody) and claim it at once, as a claim
        # request would: same generation rules, new token, new lease.
        _apply(
            tx,
            sub,
            attrs.evolve(decision, wake_event=False),
            now_ms,
            pending=pending,
            target=target,
        )
        return AckResult(
            next_wake=False, next_claim=claim(tx, secret, sub_id, claim_next_worker, now_ms)
        )
    _apply(tx, sub, decision, now_ms, pending=pending, target=target)
    return AckResult(next_wake=decision.wake_event)


def release(
    tx: Transaction,
    secret: str,
    sub_id: str,
    token: str,
    wake_id: str,
    generation: int,
    now_ms: int,
) -> None:
    sub, links, credentials = _authorise(
        tx, secret, "release", sub_id, token, wake_id, generation, now_ms
    )
    event, pending, target = _event(
        tx, sub, "release", now_ms, links=links, credentials=credentials
    )
    _apply(
        tx, sub, wake_table.decide(sub.wake_state(), event), now_ms, pending=pending, target=target
    )


def expire_leases(tx: Transaction, now_ms: int) -> tuple[ExpiredLease, ...]:
    check_int(now_ms, "now_ms")
    expired = []
    for (sub_id,) in tx.fetchall(
        "SELECT id FROM subscriptions WHERE holder IS NOT NULL AND lease_expires_at_ms <= ? "
        "ORDER BY id" + tx.row_lock + tx.skip_locked,
        (now_ms,),
    ):
        sub = load_sub(tx, sub_id, lock=True)
        if sub is None or sub.wake_state().phase(now_ms) != "lapsed":
            continue
        # A lapsed lease has a holder and a wake id (the wake table's "lapsed" phase).
        assert sub.holder is not None
        assert sub.wake_id is not None
        lapsed = ExpiredLease(sub.id, sub.wake_id, sub.generation, sub.holder)
        event, pending, target = _event(tx, sub, "expire", now_ms)
        _apply(
            tx,
            sub,
            wake_table.decide(sub.wake_state(), event),
            now_ms,
            pending=pending,
            target=target,
        )
        expired.append(lapsed)
    return tuple(expired)


def claims_held_by(tx: Transaction, worker: str) -> tuple[Subscription, ...]:
    subs = []
    for (sub_id,) in tx.fetchall(
        "SELECT id FROM subscriptions WHERE holder = ? ORDER BY id", (worker,)
    ):
        sub = load_sub(tx, sub_id, lock=False)
        if sub is not None:
            subs.append(subscription_view(tx, sub))
    return tuple(subs)
