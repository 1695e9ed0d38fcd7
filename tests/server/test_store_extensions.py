"""The store side of the pullwake extensions, on SQLite and PostgreSQL: a claim carrying its
pending messages (``inline_bytes``), and a done-ack claiming the next work
(``claim_next_worker``), each in the operation's own transaction."""

from __future__ import annotations

import json

import pytest

from pullwake.server.errors import Conflict
from pullwake.server.store import Store
from pullwake.server.store.base import AckItem, Claim
from tests.server.stores import (
    T0,
    make_subscription,
    store_factory_fixture,  # noqa: F401
    store_fixture,  # noqa: F401
    store_url_fixture,  # noqa: F401
    wake_events,
)

pytestmark = pytest.mark.anyio


def _items(claim: Claim) -> dict[str, list[object]]:
    return {read.path: [json.loads(m) for m in read.messages] for read in claim.messages}


async def _done(store: Store, claim: Claim, now_ms: int, worker: str | None = "w1") -> Claim | None:
    acks = [AckItem(link.path, link.tail_offset) for link in claim.streams]
    result = await store.ack(
        "sub",
        claim.token,
        claim.wake_id,
        claim.generation,
        acks,
        True,
        now_ms,
        claim_next_worker=worker,
        inline_bytes=1000,
    )
    if result.next_claim is not None:
        assert result.next_wake is False
    return result.next_claim


async def test_a_claim_carries_the_pending_json_messages_from_the_acked_offset(
    store: Store,
) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await store.create_stream("events/b", "application/json", T0)
    await make_subscription(store)
    await store.append("events/a", [b'{"n":1}', b'{"n":2}'], T0)
    first = await store.claim("sub", "w1", T0 + 1, inline_bytes=1000)
    assert _items(first) == {"events/a": [{"n": 1}, {"n": 2}]}
    (read,) = first.messages
    assert read.up_to_date is True
    assert read.next_offset == first.streams[0].tail_offset
    # Ack the first message only: the next claim starts after it.
    acked = (await store.read("events/a", "-1", 1)).messages[0].offset
    await store.ack(
        "sub",
        first.token,
        first.wake_id,
        first.generation,
        [AckItem("events/a", acked)],
        True,
        T0 + 2,
    )
    await store.append("events/b", [b"[1,2]"], T0 + 3)
    second = await store.claim("sub", "w1", T0 + 4, inline_bytes=1000)
    assert _items(second) == {"events/a": [{"n": 2}], "events/b": [[1, 2]]}


async def test_inline_messages_are_bounded_by_bytes_and_leave_out_what_does_not_fit(
    store: Store,
) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await store.create_stream("events/b", "application/json", T0)
    await store.create_stream("events/c", "text/plain", T0)
    await make_subscription(store)
    await store.append("events/a", [b'"aaaa"', b'"bbbb"', b'"cccc"'], T0)  # 6 bytes each
    await store.append("events/b", [b'"' + b"x" * 40 + b'"'], T0)
    await store.append("events/c", [b"plain text"], T0)
    claim = await store.claim("sub", "w1", T0 + 1, inline_bytes=13)
    # Two of a's three messages fit in 13 bytes; b's only message does not fit what is left;
    # c is not JSON.
    assert _items(claim) == {"events/a": ["aaaa", "bbbb"]}
    (read,) = claim.messages
    assert read.up_to_date is False
    second = (await store.read("events/a", "-1", 10_000)).messages[1].offset
    assert read.next_offset == second


async def test_a_first_message_over_the_budget_is_left_out(store: Store) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await make_subscription(store)
    await store.append("events/a", [b'"' + b"x" * 100 + b'"'], T0)
    claim = await store.claim("sub", "w1", T0 + 1, inline_bytes=50)
    assert claim.messages == ()
    assert claim.streams[0].has_pending


async def test_a_claim_without_inline_bytes_carries_no_messages(store: Store) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await make_subscription(store)
    await store.append("events/a", [b"1"], T0)
    claim = await store.claim("sub", "w1", T0 + 1)
    assert claim.messages == ()


async def test_done_with_claim_next_claims_pending_work_without_a_wake_event(
    store: Store,
) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await make_subscription(store)
    await store.append("events/a", [b"1"], T0)
    first = await store.claim("sub", "w1", T0 + 1)
    await store.append("events/a", [b"2"], T0 + 2)  # arrives while held: no wake
    assert len(await wake_events(store)) == 1

    nxt = await _done(store, first, T0 + 3)
    assert nxt is not None
    assert nxt.generation == first.generation + 1
    assert nxt.wake_id != first.wake_id
    assert nxt.token != first.token
    assert _items(nxt) == {"events/a": [2]}
    assert [s.acked_offset for s in nxt.streams] == [first.streams[0].tail_offset]
    # The server holds the new lease for w1, and appended no wake for it.
    assert len(await wake_events(store)) == 1
    sub = await store.subscription("sub")
    assert (sub.holder, sub.generation, sub.wake_id) == ("w1", nxt.generation, nxt.wake_id)
    assert sub.lease_expires_at_ms == T0 + 3 + 30_000

    # The old claim is fenced; the new one acks as any claim.
    with pytest.raises(Conflict) as exc:
        await store.ack("sub", first.token, first.wake_id, first.generation, [], False, T0 + 4)
    assert exc.value.code == "FENCED"
    # No pending work left: done with claim_next answers nothing to claim, no wake.
    assert await _done(store, nxt, T0 + 5) is None
    sub = await store.subscription("sub")
    assert (sub.holder, sub.wake_id) == (None, None)
    assert len(await wake_events(store)) == 1


async def test_done_without_claim_next_wakes_as_before(store: Store) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await make_subscription(store)
    await store.append("events/a", [b"1"], T0)
    first = await store.claim("sub", "w1", T0 + 1)
    await store.append("events/a", [b"2"], T0 + 2)
    assert await _done(store, first, T0 + 3, worker=None) is None
    events = await wake_events(store)
    assert [e["generation"] for e in events] == [1, 2]
    assert (await store.subscription("sub")).holder is None


async def test_claim_next_on_a_plain_ack_does_nothing(store: Store) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await make_subscription(store)
    await store.append("events/a", [b"1", b"2"], T0)
    first = await store.claim("sub", "w1", T0 + 1)
    result = await store.ack(
        "sub",
        first.token,
        first.wake_id,
        first.generation,
        [],
        False,
        T0 + 2,
        claim_next_worker="w1",
    )
    assert (result.next_wake, result.next_claim) == (False, None)
    assert (await store.subscription("sub")).generation == first.generation


async def test_a_stream_that_is_not_json_is_left_out(store: Store) -> None:
    await store.create_stream("events/a", "text/plain", T0)
    await store.create_stream("events/b", "application/json", T0)
    await make_subscription(store)
    await store.append("events/a", [b"plain"], T0)
    await store.append("events/b", [b"1"], T0)
    claim = await store.claim("sub", "w1", T0 + 1, inline_bytes=1000)
    assert _items(claim) == {"events/b": [1]}
    assert [s.has_pending for s in claim.streams] == [True, True]
