"""The store contract, run against SQLite and PostgreSQL on asyncio and trio.

Streams (create, append, read, offsets, delete), subscriptions (create and re-confirm, glob and
explicit links), wakes, claims, acks, releases, fencing, lease expiry, and the runner registry.
Persistence and change notification live in ``test_store_lifecycle.py``; random sequences in
``test_store_properties.py``.
"""

from __future__ import annotations

import pytest

from pullwake.server.errors import BadRequest, Conflict, NotFound, StoreError, Unauthorized
from pullwake.server.store import Store
from pullwake.server.store.base import AckItem, ExpiredLease, SubscriptionConfig
from pullwake.server.store.offsets import OFFSET_WIDTH
from tests.server.stores import (
    T0,
    ack_all,
    make_subscription,
    store_factory_fixture,  # noqa: F401
    store_fixture,  # noqa: F401
    store_url_fixture,  # noqa: F401
    wake_events,
)

pytestmark = pytest.mark.anyio


def assert_error(exc: pytest.ExceptionInfo[StoreError], kind: type[StoreError], code: str) -> None:
    assert isinstance(exc.value, kind), exc.value
    assert exc.value.code == code, exc.value.body()
    assert exc.value.message


# -- streams ---------------------------------------------------------------------------------


async def test_create_stream_is_idempotent_and_conflicts_on_another_type(store: Store) -> None:
    created, meta = await store.create_stream("events/a", "application/json", T0)
    assert created
    assert (meta.path, meta.content_type, meta.created_at_ms) == (
        "events/a",
        "application/json",
        T0,
    )
    assert len(meta.tail_offset) == OFFSET_WIDTH

    again, same = await store.create_stream("events/a", "Application/JSON", T0 + 5)
    assert not again
    assert same == meta

    with pytest.raises(Conflict) as exc:
        await store.create_stream("events/a", "text/plain", T0)
    assert_error(exc, Conflict, "STREAM_EXISTS")
    assert await store.stream("events/a") == meta


async def test_content_type_is_normalised(store: Store) -> None:
    # Stored as the lower-cased media type without parameters, as over HTTP (server/
    # content_types.py): one rule for both ways in.
    _, meta = await store.create_stream("t", "Text/Plain ; Charset=utf-8", T0)
    assert meta.content_type == "text/plain"
    created, _ = await store.create_stream("t", "text/plain", T0)
    assert not created
    with pytest.raises(BadRequest) as exc:
        await store.create_stream("u", "plain", T0)
    assert_error(exc, BadRequest, "INVALID_CONTENT_TYPE")


async def test_every_offset_a_result_carries_is_minted(store: Store) -> None:
    """Reads from ``-1``, ``now``, the tail or a message, and appends, never hand back a
    sentinel: the HTTP and SSE layers pass ``next_offset`` on as it is."""
    _, meta = await store.create_stream("m", "application/octet-stream", T0)
    results = [await store.append("m", [b"a", b"b"], T0)]
    message = (await store.read("m", "-1", 1)).messages[0].offset
    for offset in ("-1", "now", meta.tail_offset, message, results[0].next_offset):
        for max_bytes in (1, 1_000):
            results.append(await store.read("m", offset, max_bytes))
    offsets = [result.next_offset for result in results]
    offsets.append((await store.stream("m")).tail_offset)
    assert all(len(offset) == OFFSET_WIDTH and offset.isdigit() for offset in offsets), offsets


async def test_empty_stream_has_a_real_tail(store: Store) -> None:
    _, meta = await store.create_stream("s", "application/octet-stream", T0)
    assert meta.tail_offset not in ("-1", "now")
    assert meta.tail_offset.isdigit()
    for offset in ("-1", "now", meta.tail_offset):
        result = await store.read("s", offset, 1000)
        assert result.messages == ()
        assert result.next_offset == meta.tail_offset
        assert result.up_to_date


async def test_append_and_read_follow_offsets(store: Store) -> None:
    _, meta = await store.create_stream("events/a", "application/json", T0)
    first = await store.append("events/a", [b"1", b"2"], T0)
    second = await store.append("events/a", [b"3"], T0)
    assert meta.tail_offset < first.next_offset < second.next_offset
    assert (await store.stream("events/a")).tail_offset == second.next_offset

    everything = await store.read("events/a", "-1", 1_000_000)
    assert [m.data for m in everything.messages] == [b"1", b"2", b"3"]
    offsets = [m.offset for m in everything.messages]
    assert offsets == sorted(offsets)
    assert len(set(offsets)) == 3
    assert all(len(o) == OFFSET_WIDTH and o.isdigit() for o in offsets)
    assert offsets[1] == first.next_offset
    assert offsets[2] == second.next_offset
    assert everything.next_offset == second.next_offset
    assert everything.up_to_date

    after_first = await store.read("events/a", offsets[0], 1_000_000)
    assert [m.data for m in after_first.messages] == [b"2", b"3"]
    at_tail = await store.read("events/a", second.next_offset, 1_000_000)
    assert at_tail.messages == ()
    assert at_tail.up_to_date
    from_empty_tail = await store.read("events/a", meta.tail_offset, 1_000_000)
    assert [m.data for m in from_empty_tail.messages] == [b"1", b"2", b"3"]
    now = await store.read("events/a", "now", 1_000_000)
    assert (now.messages, now.next_offset, now.up_to_date) == ((), second.next_offset, True)


async def test_read_is_bounded_by_max_bytes_but_returns_at_least_one(store: Store) -> None:
    await store.create_stream("big", "application/octet-stream", T0)
    await store.append("big", [b"x" * 100, b"y" * 100, b"z" * 100], T0)
    one = await store.read("big", "-1", 10)
    assert [m.data for m in one.messages] == [b"x" * 100]
    assert not one.up_to_date
    two = await store.read("big", "-1", 150)
    assert len(two.messages) == 2
    rest = await store.read("big", two.next_offset, 150)
    assert [m.data for m in rest.messages] == [b"z" * 100]
    assert rest.up_to_date


@pytest.mark.parametrize(
    "offset", ["", "abc", "-2", "0", "1" * (OFFSET_WIDTH + 1), " " + "0" * (OFFSET_WIDTH - 1)]
)
async def test_malformed_offsets_are_bad_requests(store: Store, offset: str) -> None:
    await store.create_stream("s", "text/plain", T0)
    with pytest.raises(BadRequest) as exc:
        await store.read("s", offset, 100)
    assert_error(exc, BadRequest, "INVALID_OFFSET")


async def test_offset_past_the_tail_is_out_of_range(store: Store) -> None:
    await store.create_stream("s", "text/plain", T0)
    await store.create_stream("other", "text/plain", T0)
    ahead = await store.append("other", [b"a"], T0)
    with pytest.raises(Conflict) as exc:
        await store.read("s", ahead.next_offset, 100)
    assert_error(exc, Conflict, "OFFSET_OUT_OF_RANGE")


async def test_missing_streams_are_not_found(store: Store) -> None:
    for call in (
        store.stream("nope"),
        store.append("nope", [b"x"], T0),
        store.read("nope", "-1", 10),
        store.delete_stream("nope"),
    ):
        with pytest.raises(NotFound) as exc:
            await call
        assert_error(exc, NotFound, "STREAM_NOT_FOUND")


async def test_empty_append_is_refused(store: Store) -> None:
    await store.create_stream("s", "text/plain", T0)
    with pytest.raises(BadRequest) as exc:
        await store.append("s", [], T0)
    assert_error(exc, BadRequest, "EMPTY_APPEND")


@pytest.mark.parametrize(
    "path", ["", "/events/a", "events//a", "events/a/", "a/../b", "./a", "__ds/x", "a\nb", "a*"]
)
async def test_invalid_paths_are_refused(store: Store, path: str) -> None:
    with pytest.raises(BadRequest) as exc:
        await store.create_stream(path, "text/plain", T0)
    assert_error(exc, BadRequest, "INVALID_PATH")


async def test_delete_stream_and_create_again_keeps_offsets_growing(store: Store) -> None:
    await store.create_stream("s", "text/plain", T0)
    old = await store.append("s", [b"old"], T0)
    await store.delete_stream("s")
    with pytest.raises(NotFound):
        await store.stream("s")
    _, meta = await store.create_stream("s", "application/json", T0)
    assert meta.tail_offset > old.next_offset
    await store.append("s", [b"1"], T0)
    # A reader holding an offset of the old stream reads the new one from its start.
    result = await store.read("s", old.next_offset, 1000)
    assert [m.data for m in result.messages] == [b"1"]


# -- subscriptions ---------------------------------------------------------------------------


async def test_put_subscription_creates_confirms_and_conflicts(store: Store) -> None:
    config = SubscriptionConfig(
        wake_stream="wake/pool", pattern="events/*", streams=("b", "a", "b"), description="d"
    )
    created, sub = await store.put_subscription("sub", config, T0)
    assert created
    assert sub.id == "sub"
    assert sub.config.streams == ("a", "b")
    assert sub.config.lease_ttl_ms == 30_000
    assert (sub.generation, sub.wake_id, sub.holder, sub.lease_expires_at_ms) == (
        0,
        None,
        None,
        None,
    )
    assert sub.created_at_ms == T0

    reordered = SubscriptionConfig(
        wake_stream="wake/pool", pattern="events/*", streams=("a", "b"), description="d"
    )
    created, same = await store.put_subscription("sub", reordered, T0 + 10)
    assert not created
    assert same == sub

    for different in (
        SubscriptionConfig(wake_stream="wake/pool", pattern="events/**", streams=("a", "b")),
        SubscriptionConfig(
            wake_stream="wake/pool", pattern="events/*", streams=("a", "b"), lease_ttl_ms=5000
        ),
        SubscriptionConfig(wake_stream="wake/other", pattern="events/*", streams=("a", "b")),
    ):
        with pytest.raises(Conflict) as exc:
            await store.put_subscription("sub", different, T0)
        assert_error(exc, Conflict, "SUBSCRIPTION_EXISTS")
    assert await store.subscription("sub") == sub


@pytest.mark.parametrize(
    ("config", "code"),
    [
        (SubscriptionConfig(wake_stream="w"), "INVALID_SUBSCRIPTION"),
        (
            SubscriptionConfig(wake_stream="w", pattern="a", lease_ttl_ms=999),
            "INVALID_SUBSCRIPTION",
        ),
        (
            SubscriptionConfig(wake_stream="w", pattern="a", lease_ttl_ms=600_001),
            "INVALID_SUBSCRIPTION",
        ),
        (SubscriptionConfig(wake_stream="/w", pattern="a"), "INVALID_PATH"),
        (SubscriptionConfig(wake_stream="w", pattern="/a/*"), "INVALID_PATH"),
        (SubscriptionConfig(wake_stream="w", pattern="a/**b"), "INVALID_PATTERN"),
        (SubscriptionConfig(wake_stream="w", streams=("a", "/b")), "INVALID_PATH"),
    ],
)
async def test_invalid_subscriptions_are_refused(
    store: Store, config: SubscriptionConfig, code: str
) -> None:
    with pytest.raises(BadRequest) as exc:
        await store.put_subscription("sub", config, T0)
    assert_error(exc, BadRequest, code)
    with pytest.raises(NotFound):
        await store.subscription("sub")


async def test_put_creates_a_missing_wake_stream_as_json(store: Store) -> None:
    await make_subscription(store, wake_stream="wake/new")
    assert (await store.stream("wake/new")).content_type == "application/json"

    await store.create_stream("wake/text", "text/plain", T0)
    with pytest.raises(BadRequest) as exc:
        await store.put_subscription(
            "other", SubscriptionConfig(wake_stream="wake/text", pattern="x/*"), T0
        )
    assert_error(exc, BadRequest, "WAKE_STREAM_NOT_JSON")


async def test_unknown_subscription_is_not_found(store: Store) -> None:
    for call in (
        store.subscription("nope"),
        store.delete_subscription("nope"),
        store.add_streams("nope", ["a"], T0),
        store.remove_stream("nope", "a", T0),
        store.claim("nope", "w", T0),
    ):
        with pytest.raises(NotFound) as exc:
            await call
        assert_error(exc, NotFound, "SUBSCRIPTION_NOT_FOUND")


async def test_glob_links_existing_streams_at_their_tail_and_later_ones(store: Store) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await store.append("events/a", [b"1", b"2"], T0)
    await store.create_stream("events/a/deep", "application/json", T0)
    await store.create_stream("other/x", "application/json", T0)
    await make_subscription(store, pattern="events/*")

    sub = await store.subscription("sub")
    assert [(s.path, s.link_type) for s in sub.streams] == [("events/a", "glob")]
    linked = sub.streams[0]
    assert linked.acked_offset == linked.tail_offset  # no replay of history
    assert not linked.has_pending
    with pytest.raises(Conflict) as exc:
        await store.claim("sub", "w", T0)
    assert_error(exc, Conflict, "NO_PENDING_WORK")

    _, later = await store.create_stream("events/b", "application/json", T0)
    sub = await store.subscription("sub")
    assert [s.path for s in sub.streams] == ["events/a", "events/b"]
    assert sub.streams[1].acked_offset == later.tail_offset
    # The first append to the later stream counts.
    result = await store.append("events/b", [b"first"], T0)
    assert [path for path, _ in result.wakes] == ["wake/pool"]


async def test_glob_double_star_and_own_wake_stream(store: Store) -> None:
    await make_subscription(store, pattern="**", wake_stream="wake/pool")
    for path in ("a", "a/b", "a/b/c"):
        await store.create_stream(path, "application/json", T0)
    sub = await store.subscription("sub")
    # '**' matches every depth, but a subscription never links its own wake stream by glob.
    assert [s.path for s in sub.streams] == ["a", "a/b", "a/b/c"]


async def test_explicit_links_add_and_remove(store: Store) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await store.create_stream("solo", "application/json", T0)
    await store.append("solo", [b"old"], T0)
    await make_subscription(store, pattern="events/*")

    await store.add_streams("sub", ["solo", "events/a", "later"], T0)
    await store.add_streams("sub", ["solo"], T0)  # idempotent
    sub = await store.subscription("sub")
    links = {s.path: s for s in sub.streams}
    assert set(links) == {"events/a", "later", "solo"}
    assert links["solo"].link_type == "explicit"
    assert not links["solo"].has_pending  # linked at the tail
    assert links["events/a"].link_type == "explicit"
    # A name whose stream does not exist yet shows as an explicit link at the start.
    assert links["later"].link_type == "explicit"
    assert links["later"].acked_offset == links["later"].tail_offset == "0" * 20

    # A named stream that does not exist yet is linked when it is created.
    await store.create_stream("later", "application/json", T0)
    assert "later" in {s.path for s in (await store.subscription("sub")).streams}

    # Removing the explicit link keeps a glob link; an explicit-only link goes.
    await store.remove_stream("sub", "events/a", T0)
    await store.remove_stream("sub", "solo", T0)
    await store.remove_stream("sub", "solo", T0)  # idempotent
    await store.remove_stream("sub", "never-linked", T0)
    links = {s.path: s for s in (await store.subscription("sub")).streams}
    assert set(links) == {"events/a", "later"}
    assert links["events/a"].link_type == "glob"
    result = await store.append("solo", [b"x"], T0)
    assert result.wakes == ()


async def test_config_streams_are_explicit_links(store: Store) -> None:
    await store.create_stream("x", "application/json", T0)
    await make_subscription(store, pattern=None, streams=("x", "y"))
    assert [(s.path, s.link_type) for s in (await store.subscription("sub")).streams] == [
        ("x", "explicit"),
        ("y", "explicit"),
    ]
    await store.create_stream("y", "application/json", T0)
    assert [s.path for s in (await store.subscription("sub")).streams] == ["x", "y"]


async def test_deleting_a_stream_drops_its_links(store: Store) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await make_subscription(store)
    await store.delete_stream("events/a")
    assert (await store.subscription("sub")).streams == ()
    await store.create_stream("events/a", "application/json", T0)
    assert [s.path for s in (await store.subscription("sub")).streams] == ["events/a"]


# -- wakes -----------------------------------------------------------------------------------


async def test_exactly_one_wake_while_one_is_in_flight(store: Store) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await store.create_stream("events/b", "application/json", T0)
    await make_subscription(store)

    first = await store.append("events/b", [b"1"], T0 + 1)
    assert len(first.wakes) == 1
    assert [path for path, _ in first.wakes] == ["wake/pool"]
    events = await wake_events(store)
    assert len(events) == 1
    assert events[0] == {
        "type": "wake",
        "subscription_id": "sub",
        "stream": "events/b",
        "generation": 1,
        "ts": T0 + 1,
    }
    for _ in range(3):
        assert (await store.append("events/a", [b"more"], T0 + 2)).wakes == ()
    assert len(await wake_events(store)) == 1
    sub = await store.subscription("sub")
    assert sub.generation == 1
    assert sub.wake_id is not None
    assert sub.holder is None


async def test_no_wake_while_leased_and_a_new_one_after_done(store: Store) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await make_subscription(store)
    await store.append("events/a", [b"1"], T0)
    claim = await store.claim("sub", "w1", T0 + 1)
    assert claim.generation == 1
    assert (await store.append("events/a", [b"2"], T0 + 2)).wakes == ()
    assert len(await wake_events(store)) == 1

    # Done with only what the claim saw: the second message is still pending.
    assert await ack_all(store, "sub", claim, now_ms=T0 + 3) is True
    events = await wake_events(store)
    assert [e["generation"] for e in events] == [1, 2]
    sub = await store.subscription("sub")
    assert (sub.generation, sub.holder) == (2, None)

    claim2 = await store.claim("sub", "w2", T0 + 4)
    assert claim2.generation == 2
    assert await ack_all(store, "sub", claim2, now_ms=T0 + 5) is False
    assert len(await wake_events(store)) == 2
    sub = await store.subscription("sub")
    assert all(not s.has_pending for s in sub.streams)
    assert sub.wake_id is None


async def test_wake_chains_through_a_wake_stream_another_subscription_watches(
    store: Store,
) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await make_subscription(store, "first", pattern="events/*", wake_stream="wake/first")
    await make_subscription(store, "watcher", pattern="wake/*", wake_stream="wake/second")
    result = await store.append("events/a", [b"1"], T0)
    assert [path for path, _ in result.wakes] == ["wake/first", "wake/second"]


# -- claims, acks, releases ------------------------------------------------------------------


async def test_claim_needs_pending_work_and_a_free_lease(store: Store) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await make_subscription(store, lease_ttl_ms=10_000)
    with pytest.raises(Conflict) as exc:
        await store.claim("sub", "w1", T0)
    assert_error(exc, Conflict, "NO_PENDING_WORK")

    appended = await store.append("events/a", [b"1"], T0)
    claim = await store.claim("sub", "w1", T0 + 1)
    assert claim.lease_ttl_ms == 10_000
    assert [(s.path, s.tail_offset, s.has_pending) for s in claim.streams] == [
        ("events/a", appended.next_offset, True)
    ]
    sub = await store.subscription("sub")
    assert (sub.holder, sub.generation, sub.wake_id) == ("w1", claim.generation, claim.wake_id)
    assert sub.lease_expires_at_ms == T0 + 1 + 10_000

    for worker in ("w2", "w1"):
        with pytest.raises(Conflict) as exc:
            await store.claim("sub", worker, T0 + 2)
        assert_error(exc, Conflict, "ALREADY_CLAIMED")
        assert exc.value.extra == {"current_holder": "w1", "generation": claim.generation}
        assert exc.value.body()["error"]["current_holder"] == "w1"


async def test_partial_acks_move_cursors_and_extend_the_lease(store: Store) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await store.create_stream("events/b", "application/json", T0)
    await make_subscription(store, lease_ttl_ms=10_000)
    await store.append("events/a", [b"1", b"2", b"3"], T0)
    await store.append("events/b", [b"x"], T0)
    messages = (await store.read("events/a", "-1", 10_000)).messages
    claim = await store.claim("sub", "w1", T0)

    result = await store.ack(
        "sub",
        claim.token,
        claim.wake_id,
        claim.generation,
        [AckItem("events/a", messages[0].offset)],
        False,
        T0 + 8_000,
    )
    assert result.next_wake is False
    sub = await store.subscription("sub")
    links = {s.path: s for s in sub.streams}
    assert links["events/a"].acked_offset == messages[0].offset  # inclusive
    assert links["events/a"].has_pending
    assert sub.holder == "w1"
    assert sub.lease_expires_at_ms == T0 + 8_000 + 10_000
    after = await store.read("events/a", links["events/a"].acked_offset, 10_000)
    assert [m.data for m in after.messages] == [b"2", b"3"]

    # Past the original lease, still held thanks to the heartbeat ack.
    await store.ack(
        "sub",
        claim.token,
        claim.wake_id,
        claim.generation,
        [AckItem("events/a", messages[2].offset), AckItem("events/a", messages[1].offset)],
        False,
        T0 + 15_000,
    )
    links = {s.path: s for s in (await store.subscription("sub")).streams}
    assert links["events/a"].acked_offset == messages[2].offset

    # Done with events/b still pending: a new wake follows.
    result = await store.ack(
        "sub", claim.token, claim.wake_id, claim.generation, [], True, T0 + 16_000
    )
    assert result.next_wake is True
    sub = await store.subscription("sub")
    assert (sub.holder, sub.generation) == (None, claim.generation + 1)


async def test_invalid_acks_apply_nothing(store: Store) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await store.create_stream("events/b", "application/json", T0)
    await store.create_stream("unlinked", "application/json", T0)
    await make_subscription(store)
    await store.append("events/a", [b"1", b"2", b"3"], T0)
    await store.append("events/b", [b"x"], T0)
    stray = await store.append("unlinked", [b"u"], T0)
    a = (await store.read("events/a", "-1", 10_000)).messages
    b_tail = (await store.stream("events/b")).tail_offset
    claim = await store.claim("sub", "w1", T0)
    await store.ack(
        "sub",
        claim.token,
        claim.wake_id,
        claim.generation,
        [AckItem("events/a", a[1].offset)],
        False,
        T0,
    )
    before = await store.subscription("sub")

    bad_acks = [
        AckItem("events/a", a[0].offset),  # before the committed cursor
        AckItem("events/a", stray.next_offset),  # not an offset of this stream
        AckItem("events/a", "9" * OFFSET_WIDTH),  # past the tail
        AckItem("unlinked", stray.next_offset),  # stream not linked
        AckItem("events/a", "garbage"),  # not an offset at all
        AckItem("events/a", "-1"),
    ]
    for bad in bad_acks:
        for done in (False, True):
            with pytest.raises(Conflict) as exc:
                await store.ack(
                    "sub",
                    claim.token,
                    claim.wake_id,
                    claim.generation,
                    [AckItem("events/b", b_tail), bad],
                    done,
                    T0 + 1,
                )
            assert_error(exc, Conflict, "INVALID_ACK")
            assert await store.subscription("sub") == before

    # Re-acking the committed cursor is allowed and changes nothing.
    await store.ack(
        "sub",
        claim.token,
        claim.wake_id,
        claim.generation,
        [AckItem("events/a", a[1].offset)],
        False,
        T0 + 2,
    )
    links = {s.path: s for s in (await store.subscription("sub")).streams}
    assert links["events/a"].acked_offset == a[1].offset


async def test_stale_and_forged_requests_are_fenced_or_refused(store: Store) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await make_subscription(store)
    await make_subscription(store, "other", wake_stream="wake/other")
    await store.append("events/a", [b"1"], T0)
    old = await store.claim("sub", "w1", T0)
    other = await store.claim("other", "w1", T0)
    assert await ack_all(store, "sub", old, done=False) is False
    await store.release("sub", old.token, old.wake_id, old.generation, T0)
    await store.append("events/a", [b"2"], T0)
    current = await store.claim("sub", "w2", T0)
    assert current.generation > old.generation
    snapshot = await store.subscription("sub")
    tail = (await store.stream("events/a")).tail_offset
    acks = [AckItem("events/a", tail)]

    fenced = [
        (old.token, old.wake_id, old.generation),  # an earlier claim
        (current.token, old.wake_id, current.generation),  # wrong wake_id in the body
        (current.token, current.wake_id, old.generation),  # wrong generation in the body
        (other.token, other.wake_id, other.generation),  # a token for another subscription
    ]
    for token, wake_id, generation in fenced:
        with pytest.raises(Conflict) as exc:
            await store.ack("sub", token, wake_id, generation, acks, True, T0)
        assert_error(exc, Conflict, "FENCED")
        with pytest.raises(Conflict) as exc:
            await store.release("sub", token, wake_id, generation, T0)
        assert_error(exc, Conflict, "FENCED")

    head, payload, signature = current.token.split(".")
    forged_signature = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    for token in ("", "garbage", f"{head}.{payload}.{forged_signature}", current.token + "x"):
        with pytest.raises(Unauthorized) as exc_401:
            await store.ack("sub", token, current.wake_id, current.generation, acks, True, T0)
        assert_error(exc_401, Unauthorized, "INVALID_TOKEN")
    assert await store.subscription("sub") == snapshot

    assert await ack_all(store, "sub", current) is False


async def test_release_ends_the_claim_and_re_wakes_pending_work(store: Store) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await make_subscription(store)
    await store.append("events/a", [b"1"], T0)
    claim = await store.claim("sub", "w1", T0)
    await store.release("sub", claim.token, claim.wake_id, claim.generation, T0 + 1)
    sub = await store.subscription("sub")
    assert (sub.holder, sub.lease_expires_at_ms, sub.generation) == (None, None, 2)
    assert [e["generation"] for e in await wake_events(store)] == [1, 2]
    with pytest.raises(Conflict) as exc:
        await store.release("sub", claim.token, claim.wake_id, claim.generation, T0 + 2)
    assert_error(exc, Conflict, "FENCED")
    again = await store.claim("sub", "w2", T0 + 3)
    assert again.generation == 2


async def test_lease_expiry_clears_the_holder_and_re_wakes(store: Store) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await make_subscription(store, lease_ttl_ms=1_000)
    await store.append("events/a", [b"1"], T0)
    claim = await store.claim("sub", "w1", T0)
    assert await store.expire_leases(T0 + 999) == ()
    assert (await store.subscription("sub")).holder == "w1"

    # The sweep names each lease it cleared: the lapsed claim's ids and its holder.
    assert await store.expire_leases(T0 + 1_000) == (
        ExpiredLease("sub", claim.wake_id, claim.generation, "w1"),
    )
    sub = await store.subscription("sub")
    assert (sub.holder, sub.lease_expires_at_ms, sub.generation) == (None, None, 2)
    assert [e["generation"] for e in await wake_events(store)] == [1, 2]
    assert await store.expire_leases(T0 + 5_000) == ()

    with pytest.raises(Unauthorized) as exc:
        await ack_all(store, "sub", claim, now_ms=T0 + 1_001)
    assert_error(exc, Unauthorized, "LEASE_EXPIRED")
    with pytest.raises(Unauthorized):
        await store.release("sub", claim.token, claim.wake_id, claim.generation, T0 + 1_001)
    assert not any(not s.has_pending for s in (await store.subscription("sub")).streams)

    fresh = await store.claim("sub", "w2", T0 + 1_002)
    assert fresh.generation == 2
    assert await ack_all(store, "sub", fresh, now_ms=T0 + 1_003) is False


async def test_a_lapsed_lease_is_taken_over_by_the_next_claim(store: Store) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await make_subscription(store, lease_ttl_ms=1_000)
    await store.append("events/a", [b"1"], T0)
    first = await store.claim("sub", "w1", T0)
    second = await store.claim("sub", "w2", T0 + 1_000)
    assert second.generation == first.generation + 1
    assert (await store.subscription("sub")).holder == "w2"
    with pytest.raises(Unauthorized) as exc:
        await ack_all(store, "sub", first, now_ms=T0 + 1_001)
    assert_error(exc, Unauthorized, "LEASE_EXPIRED")


async def test_an_ack_after_the_lease_lapsed_is_refused_and_re_wakes(store: Store) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await make_subscription(store, lease_ttl_ms=1_000)
    await store.append("events/a", [b"1"], T0)
    claim = await store.claim("sub", "w1", T0)
    acked_before = (await store.subscription("sub")).streams
    with pytest.raises(Unauthorized) as exc:
        await ack_all(store, "sub", claim, now_ms=T0 + 1_500)
    assert_error(exc, Unauthorized, "LEASE_EXPIRED")
    sub = await store.subscription("sub")
    assert sub.holder is None
    assert sub.generation == claim.generation + 1
    assert [s.acked_offset for s in sub.streams] == [s.acked_offset for s in acked_before]


async def test_deleted_subscription_refuses_its_old_claims(store: Store) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await make_subscription(store)
    await store.append("events/a", [b"1"], T0)
    claim = await store.claim("sub", "w1", T0)
    await store.delete_subscription("sub")
    for call in (
        ack_all(store, "sub", claim),
        store.release("sub", claim.token, claim.wake_id, claim.generation, T0),
        store.claim("sub", "w1", T0),
    ):
        with pytest.raises(NotFound) as exc:
            await call
        assert_error(exc, NotFound, "SUBSCRIPTION_NOT_FOUND")
    assert await store.claims_held_by("w1") == ()

    # The same id created again: the old token is fenced and advances nothing.
    await make_subscription(store)
    await store.append("events/a", [b"2"], T0)
    snapshot = await store.subscription("sub")
    with pytest.raises(Conflict) as exc_409:
        await ack_all(store, "sub", claim)
    assert_error(exc_409, Conflict, "FENCED")
    assert await store.subscription("sub") == snapshot


async def test_claims_held_by_lists_a_workers_leases(store: Store) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await make_subscription(store, "s1", wake_stream="wake/1")
    await make_subscription(store, "s2", wake_stream="wake/2")
    await store.append("events/a", [b"1"], T0)
    await store.claim("s2", "w1", T0)
    await store.claim("s1", "w1", T0)
    held = await store.claims_held_by("w1")
    assert [sub.id for sub in held] == ["s1", "s2"]
    assert all(sub.holder == "w1" for sub in held)
    assert await store.claims_held_by("w2") == ()


# -- runner registry -------------------------------------------------------------------------


async def test_runner_registry(store: Store) -> None:
    with pytest.raises(NotFound) as exc:
        await store.runner("r1")
    assert_error(exc, NotFound, "RUNNER_NOT_FOUND")
    with pytest.raises(NotFound) as exc:
        await store.heartbeat("r1", 5_000, None, {}, T0)
    assert_error(exc, NotFound, "RUNNER_NOT_FOUND")

    created, runner = await store.register_runner("r1", "first", "wake/pool", T0)
    assert created
    assert (runner.id, runner.label, runner.wake_stream) == ("r1", "first", "wake/pool")
    assert (runner.wake_stream_offset, runner.last_heartbeat_at_ms, runner.lease_ms) == (
        None,
        None,
        None,
    )
    assert (runner.registered_at_ms, runner.diagnostics) == (T0, {})

    beat = await store.heartbeat("r1", 5_000, "0" * OFFSET_WIDTH, {"status": "running"}, T0 + 1)
    assert (beat.lease_ms, beat.last_heartbeat_at_ms) == (5_000, T0 + 1)
    assert beat.wake_stream_offset == "0" * OFFSET_WIDTH
    assert beat.diagnostics == {"status": "running"}
    kept = await store.heartbeat("r1", 6_000, None, {"status": "stopped", "n": [1, 2]}, T0 + 2)
    assert kept.wake_stream_offset == "0" * OFFSET_WIDTH
    assert kept.diagnostics == {"status": "stopped", "n": [1, 2]}

    created, again = await store.register_runner("r1", "renamed", None, T0 + 3)
    assert not created
    assert (again.label, again.wake_stream, again.wake_stream_offset) == (
        "renamed",
        None,
        "0" * OFFSET_WIDTH,
    )
    assert again.registered_at_ms == T0
    assert await store.runner("r1") == again

    with pytest.raises(BadRequest):
        await store.heartbeat("r1", 0, None, {}, T0)
    with pytest.raises(BadRequest):
        await store.register_runner("bad/id", None, None, T0)
