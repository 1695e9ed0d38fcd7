"""The wake/lease decision table, without a database: every phase × event pinned, then
Hypothesis drives random event sequences against the invariants its docstring promises."""

from __future__ import annotations

import itertools
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pullwake.server.store.rules import wake_table
from pullwake.server.store.rules.wake_table import (
    EVENT_KINDS,
    HOLDER_EVENTS,
    PHASES,
    Credentials,
    Decision,
    Event,
    Refusal,
    WakeState,
    acked_after,
    decide,
    needs_pending,
    refusal_for,
)

NOW = 10_000
TTL = 1_000
FRESH = "w-fresh"

#: One state per phase at NOW, all at generation 3; the holder (if any) is alice with wake w3.
STATES: dict[str, WakeState] = {
    "idle": WakeState(3),
    "woken": WakeState(3, "w3"),
    "held": WakeState(3, "w3", "alice", NOW + 500),
    "lapsed": WakeState(3, "w3", "alice", NOW),
}
#: alice's credentials for the claim of generation 3.
ALICE = Credentials(3, "w3", "alice", 3, "w3")


def _event(kind: str, pending: bool | None) -> Event:
    return Event(
        kind,  # type: ignore[arg-type]
        NOW,
        pending=pending,
        fresh_wake_id=FRESH,
        worker="bob" if kind == "claim" else None,
        lease_ttl_ms=TTL,
        credentials=ALICE if kind in HOLDER_EVENTS else None,
    )


def _refused(code: str, why: str = "", generation: int = 0) -> Refusal:
    return Refusal(code, why, generation)  # type: ignore[arg-type]


_FENCED_IDLE = _refused(
    "FENCED", "the token is for generation 3, the current one is 3 and no lease is held"
)
_EXPIRED_3 = _refused("LEASE_EXPIRED", generation=3)
_IDLE = STATES["idle"]
_WOKEN_4 = WakeState(4, FRESH)
_LAPSE_CLEARED = WakeState(3, expired_generation=3)
_REWOKEN = WakeState(4, FRESH, expired_generation=3)

# (phase, event, pending) -> the whole decision. "Ignored" rows are Decision(state unchanged).
PINNED: dict[tuple[str, str, bool], Decision] = {
    ("idle", "append", True): Decision(_WOKEN_4, minted=True, wake_event=True),
    ("idle", "append", False): Decision(_IDLE),
    ("woken", "append", True): Decision(STATES["woken"]),
    ("woken", "append", False): Decision(STATES["woken"]),
    ("held", "append", True): Decision(STATES["held"]),
    ("held", "append", False): Decision(STATES["held"]),
    ("lapsed", "append", True): Decision(_REWOKEN, minted=True, wake_event=True),
    ("lapsed", "append", False): Decision(_LAPSE_CLEARED),
    ("idle", "claim", True): Decision(WakeState(4, FRESH, "bob", NOW + TTL), minted=True),
    ("idle", "claim", False): Decision(_IDLE, refusal=_refused("NO_PENDING_WORK")),
    ("woken", "claim", True): Decision(WakeState(3, "w3", "bob", NOW + TTL)),
    ("woken", "claim", False): Decision(_IDLE, refusal=_refused("NO_PENDING_WORK")),
    ("held", "claim", True): Decision(STATES["held"], refusal=_refused("ALREADY_CLAIMED")),
    ("held", "claim", False): Decision(STATES["held"], refusal=_refused("ALREADY_CLAIMED")),
    ("lapsed", "claim", True): Decision(
        WakeState(4, FRESH, "bob", NOW + TTL, expired_generation=3), minted=True, wake_event=True
    ),
    ("lapsed", "claim", False): Decision(_LAPSE_CLEARED, refusal=_refused("NO_PENDING_WORK")),
    ("idle", "ack", True): Decision(_IDLE, refusal=_FENCED_IDLE),
    ("idle", "ack", False): Decision(_IDLE, refusal=_FENCED_IDLE),
    ("woken", "ack", True): Decision(STATES["woken"], refusal=_FENCED_IDLE),
    ("woken", "ack", False): Decision(STATES["woken"], refusal=_FENCED_IDLE),
    ("held", "ack", True): Decision(WakeState(3, "w3", "alice", NOW + TTL)),
    ("held", "ack", False): Decision(WakeState(3, "w3", "alice", NOW + TTL)),
    ("lapsed", "ack", True): Decision(_REWOKEN, minted=True, wake_event=True, refusal=_EXPIRED_3),
    ("lapsed", "ack", False): Decision(_LAPSE_CLEARED, refusal=_EXPIRED_3),
    ("idle", "done", True): Decision(_IDLE, refusal=_FENCED_IDLE),
    ("idle", "done", False): Decision(_IDLE, refusal=_FENCED_IDLE),
    ("woken", "done", True): Decision(STATES["woken"], refusal=_FENCED_IDLE),
    ("woken", "done", False): Decision(STATES["woken"], refusal=_FENCED_IDLE),
    ("held", "done", True): Decision(_WOKEN_4, minted=True, wake_event=True),
    ("held", "done", False): Decision(_IDLE),
    ("lapsed", "done", True): Decision(_REWOKEN, minted=True, wake_event=True, refusal=_EXPIRED_3),
    ("lapsed", "done", False): Decision(_LAPSE_CLEARED, refusal=_EXPIRED_3),
    ("idle", "release", True): Decision(_IDLE, refusal=_FENCED_IDLE),
    ("idle", "release", False): Decision(_IDLE, refusal=_FENCED_IDLE),
    ("woken", "release", True): Decision(STATES["woken"], refusal=_FENCED_IDLE),
    ("woken", "release", False): Decision(STATES["woken"], refusal=_FENCED_IDLE),
    ("held", "release", True): Decision(_WOKEN_4, minted=True, wake_event=True),
    ("held", "release", False): Decision(_IDLE),
    ("lapsed", "release", True): Decision(
        _REWOKEN, minted=True, wake_event=True, refusal=_EXPIRED_3
    ),
    ("lapsed", "release", False): Decision(_LAPSE_CLEARED, refusal=_EXPIRED_3),
    ("idle", "expire", True): Decision(_IDLE),
    ("idle", "expire", False): Decision(_IDLE),
    ("woken", "expire", True): Decision(STATES["woken"]),
    ("woken", "expire", False): Decision(STATES["woken"]),
    ("held", "expire", True): Decision(STATES["held"]),
    ("held", "expire", False): Decision(STATES["held"]),
    ("lapsed", "expire", True): Decision(_REWOKEN, minted=True, wake_event=True),
    ("lapsed", "expire", False): Decision(_LAPSE_CLEARED),
}


def test_every_phase_and_event_is_pinned() -> None:
    assert set(PINNED) == set(itertools.product(PHASES, EVENT_KINDS, (True, False)))
    assert {phase: state.phase(NOW) for phase, state in STATES.items()} == {
        phase: phase for phase in PHASES
    }


@pytest.mark.parametrize(("phase", "kind", "pending"), sorted(PINNED))
def test_pinned_decision(phase: str, kind: str, pending: bool) -> None:
    assert decide(STATES[phase], _event(kind, pending)) == PINNED[(phase, kind, pending)]


@pytest.mark.parametrize(("phase", "kind"), sorted(itertools.product(PHASES, EVENT_KINDS)))
def test_pending_is_read_exactly_where_needs_pending_says(phase: str, kind: str) -> None:
    state = STATES[phase]
    if needs_pending(state, kind, NOW):  # type: ignore[arg-type]
        assert PINNED[(phase, kind, True)] != PINNED[(phase, kind, False)] or phase == "held"
        with pytest.raises(ValueError, match="pending"):
            decide(state, _event(kind, None))
    else:
        assert PINNED[(phase, kind, True)] == PINNED[(phase, kind, False)]
        assert decide(state, _event(kind, None)) == PINNED[(phase, kind, True)]


def test_the_body_must_name_the_current_claim_too() -> None:
    stale_body = attrs.evolve(ALICE, wake_id="w2")
    assert refusal_for(STATES["held"], stale_body, NOW) == _refused(
        "FENCED", "the body's generation or wake_id is not the current one"
    )
    other_worker = attrs.evolve(ALICE, token_worker="mallory")
    assert refusal_for(STATES["held"], other_worker, NOW) == _refused(
        "FENCED", "the token is for generation 3, the current one is 3"
    )
    older = Credentials(2, "w2", "alice", 2, "w2")
    assert refusal_for(STATES["lapsed"], older, NOW) == _refused(
        "FENCED", "generation 2 is not current"
    )
    assert refusal_for(attrs.evolve(_WOKEN_4, expired_generation=3), ALICE, NOW) == _EXPIRED_3
    assert refusal_for(STATES["held"], ALICE, NOW) is None


def test_a_token_must_name_the_current_wake_id_as_well_as_the_generation() -> None:
    other_wake = attrs.evolve(ALICE, token_wake_id="w2")
    assert refusal_for(STATES["held"], other_wake, NOW) == _refused(
        "FENCED", "the token is for generation 3, the current one is 3"
    )


@pytest.mark.parametrize(
    ("state", "event", "message"),
    [
        (STATES["held"], Event("ack", NOW), "a 'ack' event needs the holder's credentials"),
        (
            STATES["lapsed"],
            Event("done", NOW, pending=False),
            "a 'done' event needs the holder's credentials",
        ),
        (
            _IDLE,
            Event("claim", NOW, pending=True, fresh_wake_id=FRESH),
            "a claim event needs its worker",
        ),
        (_IDLE, Event("append", NOW, pending=True), "minting a generation needs a fresh_wake_id"),
    ],
    ids=[
        "ack-without-credentials",
        "lapsed-done-without-credentials",
        "claim-without-worker",
        "mint-without-wake-id",
    ],
)
def test_an_incomplete_event_is_a_programming_error_that_says_what_is_missing(
    state: WakeState, event: Event, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        decide(state, event)


def test_acked_positions_never_move_backwards_or_past_the_tail() -> None:
    assert [acked_after(5, 9, position) for position in (4, 5, 7, 9, 10)] == [
        "behind",
        5,
        7,
        9,
        "past_tail",
    ]


# -- random sequences ----------------------------------------------------------------------

_steps = st.lists(
    st.tuples(
        st.sampled_from(EVENT_KINDS),
        st.integers(0, 2 * TTL),  # time passing before the event
        st.booleans(),  # pending work
        st.sampled_from(["alice", "bob"]),  # the claiming worker
        st.integers(0, 10),  # which credentials a holder event presents (see below)
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(steps=_steps)
def test_random_sequences_keep_the_invariants(steps: list[tuple[Any, ...]]) -> None:
    state = WakeState(0)
    now = 0
    ids = (f"w{n}" for n in itertools.count())
    issued: list[Credentials] = []  # every claim handed out, oldest first
    holder_generations: set[int] = set()
    for kind, elapsed, pending, worker, pick in steps:
        now += elapsed
        before = state
        lapsed = before.phase(now) == "lapsed"
        credentials = None
        if kind in HOLDER_EVENTS:
            if not issued:
                continue
            credentials = issued[-1 - pick % len(issued)]
            if pick == 10:  # a body that disagrees with its own token
                credentials = attrs.evolve(credentials, wake_id="forged")
        event = Event(kind, now, pending, next(ids), worker, TTL, credentials)
        decision = decide(before, event)
        if kind in HOLDER_EVENTS:
            # Pending work never decides a holder's refusal, so it is checked before acks apply.
            flipped = decide(before, attrs.evolve(event, pending=not pending))
            assert flipped.refusal == decision.refusal
            assert flipped.refusal == refusal_for(before, credentials, now)
        state = decision.state

        # A holder implies a wake id (and a lease end), at every step.
        assert (state.holder is None) == (state.lease_expires_at_ms is None)
        assert state.holder is None or state.wake_id is not None
        # Never more than one wake outstanding: a wake is issued only when none was in flight,
        # or when this very event ended the one in flight (a lapse, or its holder being done).
        ended = lapsed or (kind in ("done", "release") and decision.refusal is None)
        if decision.wake_event:
            assert before.wake_id is None or ended
            assert decision.minted
        # Generations only grow, by one per mint, and a mint always brings a fresh wake id.
        assert state.generation == before.generation + decision.minted
        if decision.minted:
            assert state.wake_id == event.fresh_wake_id != before.wake_id
        # Every claim gets a generation no earlier holder had.
        if kind == "claim" and decision.refusal is None:
            assert state.generation not in holder_generations
            holder_generations.add(state.generation)
            assert state.wake_id is not None
            issued.append(
                Credentials(
                    state.generation, state.wake_id, worker, state.generation, state.wake_id
                )
            )
        else:
            assert state.holder in (None, before.holder)
        # Fencing: a refused request changes nothing but clearing a lapsed lease (and dropping
        # a wake nobody can claim because no work is pending).
        if decision.refusal is not None:
            if lapsed:
                assert state.holder is None or kind == "claim"
                assert state.expired_generation == before.generation
            elif decision.refusal.code == "NO_PENDING_WORK":
                assert state == attrs.evolve(before, wake_id=None)
            else:
                assert state == before
                assert not decision.minted
        if credentials is not None and credentials != issued[-1] and not lapsed:
            assert decision.refusal is not None
            assert state == before


@given(
    acked=st.integers(0, 100),
    tail=st.integers(0, 100),
    positions=st.lists(st.integers(0, 120), max_size=10),
)
def test_acks_in_any_order_never_move_the_cursor_backwards(
    acked: int, tail: int, positions: list[int]
) -> None:
    tail = max(tail, acked)
    for position in positions:
        moved = acked_after(acked, tail, position)
        if isinstance(moved, int):
            assert acked <= moved <= tail
            acked = moved
        else:
            assert moved == ("behind" if position < acked else "past_tail")


def test_the_table_imports_nothing_from_the_database_layer() -> None:
    source = wake_table.__loader__.get_source(wake_table.__name__)  # type: ignore[union-attr]
    assert source is not None
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert imports == [
        "from __future__ import annotations",
        "from typing import Literal",
        "import attrs",
    ]
