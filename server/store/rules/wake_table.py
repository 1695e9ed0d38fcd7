"""Decide what a subscription's wake and lease state does on each event: a pure table.

Theory of operation
-------------------
A subscription is in one of four *phases*, read off its row at a moment ``now_ms``:

* ``idle``   -- no wake in flight, no lease (``wake_id`` and ``holder`` are None).
* ``woken``  -- a wake is in flight (``wake_id`` set) and nobody holds the lease yet.
* ``held``   -- a worker holds the lease (``holder`` set) until ``lease_expires_at_ms``.
* ``lapsed`` -- a worker held the lease and it ran out (``lease_expires_at_ms <= now_ms``);
  nobody cleared it yet.

Six events reach it: ``append`` (a linked stream was appended to; also used for "offer a
wake" after other changes), ``claim``, ``ack`` (an ack that keeps the lease), ``done`` (an ack
that ends the claim), ``release`` and ``expire`` (the lease sweep). :func:`decide` maps a state
and an event to a :class:`Decision`: the new state, whether a new generation was minted, whether
a wake event must be appended for it, and a :class:`Refusal` to raise. The rules in
``wakes.py`` load the row, call :func:`decide` and apply the decision in SQL; nothing else
writes these columns.

A lapsed lease is cleared before anything else happens: every event on ``lapsed`` first
expires the lease (``expired_generation`` remembers the lapsed generation, and pending work is
woken again), then proceeds from the resulting phase.

What may never happen (``tests/server/test_wake_table.py`` checks each with Hypothesis):

* more than one wake outstanding: a wake is issued only from ``idle``;
* a holder without a wake id;
* a claim at a generation an earlier holder had: every mint is ``generation + 1``;
* a stale request (an old generation or wake id, another worker) changing the state, except
  that a lapsed lease it finds is cleared;
* a refusal that depends on whether work is pending, so a holder's request is checked before
  its acks are applied, and decided after (:func:`refusal_for`).

Acked positions live on the links; :func:`acked_after` is the one rule that moves them, and
never backwards or past the tail.
This module imports nothing from the database layer; it is plain data and functions because it
runs on every append (a chart instance would cost about 127 µs per event).
"""

from __future__ import annotations

from typing import Literal

import attrs

Phase = Literal["idle", "woken", "held", "lapsed"]
EventKind = Literal["append", "claim", "ack", "done", "release", "expire"]

PHASES: tuple[Phase, ...] = ("idle", "woken", "held", "lapsed")
EVENT_KINDS: tuple[EventKind, ...] = ("append", "claim", "ack", "done", "release", "expire")
#: The events a holder sends with its claim token.
HOLDER_EVENTS: frozenset[EventKind] = frozenset({"ack", "done", "release"})


@attrs.frozen
class WakeState:
    """The wake and lease columns of one subscription row."""

    generation: int
    # Invariant: set while a wake is in flight or a lease is held (holder implies wake_id).
    wake_id: str | None = None
    # Invariant: holder and lease_expires_at_ms are both set or both None.
    holder: str | None = None
    lease_expires_at_ms: int | None = None
    #: The generation whose lease last lapsed (its holder is told LEASE_EXPIRED, not FENCED).
    expired_generation: int | None = None

    def phase(self, now_ms: int) -> Phase:
        """Return the phase this state is in at ``now_ms``."""
        if self.holder is not None:
            if self.lease_expires_at_ms is not None and self.lease_expires_at_ms > now_ms:
                return "held"
            return "lapsed"
        return "idle" if self.wake_id is None else "woken"


@attrs.frozen
class Credentials:
    """What a holder's request presents: its token's claims and the body's fields."""

    token_generation: int
    token_wake_id: str
    token_worker: str
    generation: int
    wake_id: str


@attrs.frozen
class Event:
    """One event for :func:`decide`.

    ``pending`` says whether some linked stream's tail is past its acked position *after* the
    event's own writes (for ``done``, after its acks); pass None when :func:`needs_pending`
    says the decision does not read it, to skip computing it. ``fresh_wake_id`` is the wake id
    to use if the decision mints a generation (the caller draws it, so this stays pure).
    """

    kind: EventKind
    now_ms: int
    pending: bool | None = None
    fresh_wake_id: str = ""
    worker: str | None = None
    lease_ttl_ms: int = 0
    credentials: Credentials | None = None


@attrs.frozen
class Refusal:
    """Why an event is refused: an error code and a short reason for the message."""

    code: Literal["ALREADY_CLAIMED", "NO_PENDING_WORK", "FENCED", "LEASE_EXPIRED"]
    why: str = ""
    #: For LEASE_EXPIRED: the generation whose lease lapsed.
    generation: int = 0


@attrs.frozen
class Decision:
    """What to apply: the new state, and what else to do; ``refusal`` is raised after commit."""

    state: WakeState
    #: A new generation and wake id were drawn: snapshot the linked tails for it.
    minted: bool = False
    #: Append a wake event for ``state.generation`` to the wake stream.
    wake_event: bool = False
    refusal: Refusal | None = None


def needs_pending(state: WakeState, kind: EventKind, now_ms: int) -> bool:
    """Return whether :func:`decide` reads ``Event.pending`` for this state and event."""
    phase = state.phase(now_ms)
    if phase == "lapsed":
        return True
    if kind == "append":
        return phase == "idle"
    if kind == "claim":
        return phase in ("idle", "woken")
    if kind in ("done", "release"):
        return phase == "held"
    return False


def refusal_for(state: WakeState, credentials: Credentials, now_ms: int) -> Refusal | None:
    """Check a holder's credentials against the state; return why they are refused, if so.

    A lapsed lease refuses everyone (``LEASE_EXPIRED`` for its own generation, ``FENCED`` for
    others); then the generation that last lapsed is told ``LEASE_EXPIRED``; then anything not
    matching the current claim is ``FENCED``.
    """
    if state.phase(now_ms) == "lapsed":
        if credentials.token_generation == state.generation:
            return Refusal("LEASE_EXPIRED", generation=credentials.token_generation)
        return Refusal("FENCED", f"generation {credentials.token_generation} is not current")
    # Every claim after an expiry gets a later generation, so this names the lapsed lease only.
    if credentials.token_generation == state.expired_generation:
        return Refusal("LEASE_EXPIRED", generation=credentials.token_generation)
    if (
        credentials.token_generation != state.generation
        or credentials.token_wake_id != state.wake_id
        or credentials.token_worker != state.holder
    ):
        return Refusal(
            "FENCED",
            f"the token is for generation {credentials.token_generation}, the current one is "
            f"{state.generation}" + ("" if state.holder is not None else " and no lease is held"),
        )
    if credentials.generation != state.generation or credentials.wake_id != state.wake_id:
        return Refusal("FENCED", "the body's generation or wake_id is not the current one")
    return None


def acked_after(acked: int, tail: int, position: int) -> int | Literal["behind", "past_tail"]:
    """Return a link's acked position after acking ``position``, or why the ack is refused.

    ``behind``: before the committed cursor; ``past_tail``: after the stream's tail. Acking the
    cursor itself again is accepted and changes nothing.
    """
    if position < acked:
        return "behind"
    if position > tail:
        return "past_tail"
    return position


def _pending(event: Event) -> bool:
    if event.pending is None:
        raise ValueError(f"a {event.kind!r} event here depends on pending work: pass pending")
    return event.pending


def _mint(state: WakeState, event: Event) -> WakeState:
    if not event.fresh_wake_id:
        raise ValueError("minting a generation needs a fresh_wake_id")
    return attrs.evolve(state, generation=state.generation + 1, wake_id=event.fresh_wake_id)


def _offer_wake(state: WakeState, event: Event) -> Decision:
    """From idle, issue a wake when work is pending; otherwise change nothing."""
    if state.wake_id is None and state.holder is None and _pending(event):
        return Decision(_mint(state, event), minted=True, wake_event=True)
    return Decision(state)


def _expire(state: WakeState, event: Event) -> Decision:
    """Clear a lapsed lease, remember its generation, and wake pending work again."""
    cleared = WakeState(state.generation, expired_generation=state.generation)
    return _offer_wake(cleared, event)


def _claim(state: WakeState, event: Event) -> Decision:
    phase = state.phase(event.now_ms)
    if phase == "held":
        return Decision(state, refusal=Refusal("ALREADY_CLAIMED"))
    if not _pending(event):
        return Decision(attrs.evolve(state, wake_id=None), refusal=Refusal("NO_PENDING_WORK"))
    if event.worker is None:
        raise ValueError("a claim event needs its worker")
    minted = state.wake_id is None
    claimed = _mint(state, event) if minted else state
    claimed = attrs.evolve(
        claimed, holder=event.worker, lease_expires_at_ms=event.now_ms + event.lease_ttl_ms
    )
    return Decision(claimed, minted=minted)


def _holder_request(state: WakeState, event: Event) -> Decision:
    if event.credentials is None:
        raise ValueError(f"a {event.kind!r} event needs the holder's credentials")
    refusal = refusal_for(state, event.credentials, event.now_ms)
    if refusal is not None:
        return Decision(state, refusal=refusal)
    if event.kind == "ack":
        return Decision(attrs.evolve(state, lease_expires_at_ms=event.now_ms + event.lease_ttl_ms))
    ended = attrs.evolve(state, holder=None, lease_expires_at_ms=None, wake_id=None)
    return _offer_wake(ended, event)


def decide(state: WakeState, event: Event) -> Decision:
    """Return what ``event`` does to ``state``; never raises for a refusal (it is returned)."""
    if state.phase(event.now_ms) == "lapsed":
        expired = _expire(state, event)
        if event.kind in ("append", "expire"):
            return expired
        if event.kind in HOLDER_EVENTS:
            if event.credentials is None:
                raise ValueError(f"a {event.kind!r} event needs the holder's credentials")
            return attrs.evolve(
                expired, refusal=refusal_for(state, event.credentials, event.now_ms)
            )
        then = _claim(expired.state, event)
        if expired.minted and then.minted:
            raise AssertionError("one event minted two generations")
        return Decision(
            then.state,
            minted=expired.minted or then.minted,
            wake_event=expired.wake_event or then.wake_event,
            refusal=then.refusal,
        )
    return _decide_live(state, event)


def _decide_live(state: WakeState, event: Event) -> Decision:
    if event.kind == "append":
        return _offer_wake(state, event)
    if event.kind == "claim":
        return _claim(state, event)
    if event.kind in HOLDER_EVENTS:
        return _holder_request(state, event)
    return Decision(state)
