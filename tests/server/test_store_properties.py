"""Random sequences against the store's invariants (Hypothesis), on SQLite and PostgreSQL.

Each example works under its own fresh names in the test's store, so one database serves every
example of a test.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pullwake.server.errors import Conflict, StoreError, Unauthorized
from pullwake.server.store import Store
from pullwake.server.store.base import AckItem, Claim, SubscriptionConfig
from tests.server.stores import (
    T0,
    store_factory_fixture,  # noqa: F401
    store_fixture,  # noqa: F401
    store_url_fixture,  # noqa: F401
)

pytestmark = pytest.mark.anyio

_names = itertools.count()

PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY_SETTINGS
@given(batches=st.lists(st.lists(st.binary(max_size=20), min_size=1, max_size=5), max_size=6))
async def test_offsets_stay_sorted_under_random_append_batches(
    store: Store, batches: list[list[bytes]]
) -> None:
    path = f"p{next(_names)}"
    _, meta = await store.create_stream(path, "application/octet-stream", T0)
    tails = [meta.tail_offset]
    for batch in batches:
        tails.append((await store.append(path, batch, T0)).next_offset)
    assert tails == sorted(tails)
    assert len(set(tails)) == len(tails)
    result = await store.read(path, "-1", 10_000_000)
    assert [m.data for m in result.messages] == [item for batch in batches for item in batch]
    offsets = [m.offset for m in result.messages]
    assert offsets == sorted(offsets)
    assert len(set(offsets)) == len(offsets)
    assert set(tails[1:]) <= set(offsets)
    assert result.next_offset == tails[-1]
    # Reading after any offset returns exactly the messages after it.
    for index, offset in enumerate(offsets):
        after = await store.read(path, offset, 10_000_000)
        assert [m.offset for m in after.messages] == offsets[index + 1 :]


WORKERS = ("w0", "w1", "w2")
STREAMS = 2
TTL = 1_000

APPEND = st.tuples(st.just("append"), st.integers(0, STREAMS - 1), st.integers(1, 3))
CLAIM = st.tuples(st.just("claim"), st.sampled_from(WORKERS))
# An ack or release uses the newest claim granted, or (stale) any earlier one (picked by index).
# Per stream, an ack names a random message (choice < 3), the tail (< 8), or nothing. Every
# choice is drawn up front: a lazy draw inside the async test would stop it mid-flight.
WHICH = st.one_of(st.just(-1), st.just(-1), st.integers(0, 1_000))
ACK = st.tuples(
    st.just("ack"),
    WHICH,
    st.booleans(),
    st.lists(
        st.tuples(st.integers(0, 9), st.integers(0, 1_000)), min_size=STREAMS, max_size=STREAMS
    ),
)
RELEASE = st.tuples(st.just("release"), WHICH)
TICK = st.tuples(st.just("tick"), st.integers(0, 600))
EXPIRE = st.tuples(st.just("expire"))
# Repeated branches weigh the mix towards the interesting operations.
operations = st.lists(
    st.one_of(APPEND, APPEND, CLAIM, CLAIM, ACK, ACK, ACK, RELEASE, TICK, EXPIRE),
    min_size=8,
    max_size=30,
)

ALLOWED_CODES = {"FENCED", "LEASE_EXPIRED", "INVALID_ACK", "ALREADY_CLAIMED", "NO_PENDING_WORK"}


@PROPERTY_SETTINGS
@given(ops=operations)
async def test_random_claims_acks_and_releases_keep_the_invariants(
    store: Store, ops: list[tuple[Any, ...]]
) -> None:
    n = next(_names)
    sub_id, wake = f"sub{n}", f"wake/{n}"
    paths = [f"e{n}/{i}" for i in range(STREAMS)]
    for path in paths:
        await store.create_stream(path, "application/json", T0)
    await store.put_subscription(
        sub_id, SubscriptionConfig(wake_stream=wake, pattern=f"e{n}/*", lease_ttl_ms=TTL), T0
    )
    now = T0
    latest: Claim | None = None  # the last claim the store granted
    lease_until = 0  # when the model says that claim's lease ends
    issued: list[Claim] = []  # every claim granted, oldest first
    cursors = {path: (await store.stream(path)).tail_offset for path in paths}
    generations_granted: list[int] = []

    for op in ops:
        kind = op[0]
        before = await store.subscription(sub_id)
        try:
            if kind == "append":
                await store.append(paths[op[1]], [b"%d" % i for i in range(op[2])], now)
            elif kind == "claim":
                claim = await store.claim(sub_id, op[1], now)
                generations_granted.append(claim.generation)
                latest, lease_until = claim, now + TTL
                issued.append(claim)
            elif kind == "ack" and issued:
                done, picks = op[2], op[3]
                claim = issued[op[1] % len(issued)]
                acks = []
                for path, (choice, index) in zip(paths, picks, strict=True):
                    messages = (await store.read(path, "-1", 10_000_000)).messages
                    if messages and choice < 3:
                        acks.append(AckItem(path, messages[index % len(messages)].offset))
                    elif choice < 8:
                        acks.append(AckItem(path, (await store.stream(path)).tail_offset))
                await store.ack(
                    sub_id, claim.token, claim.wake_id, claim.generation, acks, done, now
                )
                # Only the current, live claim may ever ack.
                assert claim is latest
                assert now < lease_until
                lease_until = 0 if done else now + TTL
                if done:
                    latest = None
            elif kind == "release" and issued:
                claim = issued[op[1] % len(issued)]
                await store.release(sub_id, claim.token, claim.wake_id, claim.generation, now)
                assert claim is latest
                assert now < lease_until
                latest, lease_until = None, 0
            elif kind == "tick":
                now += op[1]
            elif kind == "expire":
                await store.expire_leases(now)
        except (Conflict, Unauthorized) as exc:
            refused: StoreError | None = exc
        except StoreError as exc:  # pragma: no cover - reported with its body
            raise AssertionError(exc.body()) from exc
        else:
            refused = None
        if refused is not None:
            assert refused.code in ALLOWED_CODES, refused.body()
            if refused.code in ("INVALID_ACK", "ALREADY_CLAIMED"):
                assert await store.subscription(sub_id) == before

        sub = await store.subscription(sub_id)
        links = {link.path: link for link in sub.streams}
        for path in paths:
            link = links[path]
            assert cursors[path] <= link.acked_offset <= link.tail_offset
            cursors[path] = link.acked_offset
        assert sub.holder is None or sub.wake_id is not None
        if sub.holder is not None:
            assert latest is not None
            assert sub.holder in WORKERS
            assert (sub.generation, sub.wake_id) == (latest.generation, latest.wake_id)
        # No lost wake: pending work always has a wake in flight or a holder.
        if any(link.has_pending for link in sub.streams):
            assert sub.wake_id is not None or sub.holder is not None
        assert generations_granted == sorted(set(generations_granted))

    events = [json.loads(m.data) for m in (await store.read(wake, "-1", 10_000_000)).messages]
    generations = [event["generation"] for event in events]
    assert generations == sorted(set(generations))
    assert all(event["subscription_id"] == sub_id for event in events)
