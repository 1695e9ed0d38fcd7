"""Store lifecycle on SQLite and PostgreSQL: open/close, persistence across reopen, change
notification (``wait_for_change``), migrations, and concurrent claims from two stores."""

from __future__ import annotations

import anyio
import pytest

from pullwake.server.errors import Conflict, StoreUnavailable
from pullwake.server.store import Store, open_store
from pullwake.server.store.base import AckItem, Claim
from tests.server.stores import (
    T0,
    StoreFactory,
    ack_all,
    make_subscription,
    store_factory_fixture,  # noqa: F401
    store_fixture,  # noqa: F401
    store_url_fixture,  # noqa: F401
    wait_until_parked,
    wake_events,
)

pytestmark = pytest.mark.anyio


async def test_state_survives_close_and_reopen(store_url: str) -> None:
    first = open_store(store_url)
    await first.open()
    await first.create_stream("events/a", "application/json", T0)
    await first.create_stream("events/b", "application/json", T0)
    await make_subscription(first, lease_ttl_ms=60_000)
    await first.append("events/a", [b"1", b"2"], T0)
    await first.append("events/b", [b"x"], T0)
    messages = (await first.read("events/a", "-1", 10_000)).messages
    claim = await first.claim("sub", "w1", T0 + 1)
    await first.ack(
        "sub",
        claim.token,
        claim.wake_id,
        claim.generation,
        [AckItem("events/a", messages[0].offset)],
        False,
        T0 + 2,
    )
    await first.register_runner("r1", "label", "wake/pool", T0)
    await first.heartbeat("r1", 5_000, messages[0].offset, {"status": "running"}, T0 + 3)
    before = await first.subscription("sub")
    tail_before = (await first.stream("events/b")).tail_offset
    await first.aclose()

    second = open_store(store_url)
    await second.open()
    try:
        after = await second.subscription("sub")
        assert after == before
        assert (after.holder, after.generation) == ("w1", claim.generation)
        assert after.lease_expires_at_ms == T0 + 2 + 60_000
        assert {s.path: s.acked_offset for s in after.streams}["events/a"] == messages[0].offset
        runner = await second.runner("r1")
        assert runner.wake_stream_offset == messages[0].offset
        assert runner.diagnostics == {"status": "running"}
        assert [m.data for m in (await second.read("events/a", "-1", 10_000)).messages] == [
            b"1",
            b"2",
        ]
        # Offsets keep growing after a restart.
        appended = await second.append("events/b", [b"y"], T0 + 4)
        assert appended.next_offset > tail_before
        # The token signed before the restart still verifies; the claim is still held.
        with pytest.raises(Conflict) as exc:
            await second.claim("sub", "w2", T0 + 5)
        assert exc.value.code == "ALREADY_CLAIMED"
        assert await ack_all(second, "sub", claim, now_ms=T0 + 6) is True
        assert len(await wake_events(second)) == 2
    finally:
        await second.aclose()


async def test_calls_outside_open_are_unavailable(store_url: str) -> None:
    store = open_store(store_url)
    with pytest.raises(StoreUnavailable) as exc:
        await store.stream("x")
    assert exc.value.code == "STORE_NOT_OPEN"
    await store.open()
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(StoreUnavailable) as exc:
        await store.stream("x")
    assert exc.value.code == "STORE_CLOSED"
    assert exc.value.status == 503


async def test_migrations_apply_once(store_factory: StoreFactory) -> None:
    first = await store_factory()
    await first.create_stream("s", "text/plain", T0)
    second = await store_factory()  # runs the migration step again on a migrated database
    assert (await second.stream("s")).path == "s"


async def test_wait_for_change_wakes_on_append(store: Store) -> None:
    _, meta = await store.create_stream("s", "application/json", T0)
    results: list[bool] = []

    async def wait() -> None:
        results.append(await store.wait_for_change("s", meta.tail_offset, 30))

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await wait_until_parked(store)
        await store.append("s", [b"1"], T0)
    assert results == [True]


async def test_wait_for_change_answers_at_once_when_already_past(store: Store) -> None:
    _, meta = await store.create_stream("s", "application/json", T0)
    await store.append("s", [b"1"], T0)
    with anyio.fail_after(5):
        assert await store.wait_for_change("s", meta.tail_offset, 30) is True
        assert await store.wait_for_change("s", "-1", 30) is True
        assert await store.wait_for_change("missing", "-1", 30) is True


async def test_wait_for_change_times_out(store: Store) -> None:
    _, meta = await store.create_stream("s", "application/json", T0)
    with anyio.fail_after(5):
        assert await store.wait_for_change("s", meta.tail_offset, 0.05) is False
        assert await store.wait_for_change("s", "now", 0) is False


async def test_wait_for_change_wakes_on_delete_and_wake_appends(store: Store) -> None:
    await store.create_stream("events/a", "application/json", T0)
    await store.create_stream("doomed", "application/json", T0)
    await make_subscription(store)
    results: dict[str, bool] = {}

    async def wait(path: str) -> None:
        results[path] = await store.wait_for_change(path, "now", 30)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait, "doomed")
        tg.start_soon(wait, "wake/pool")
        await wait_until_parked(store, 2)
        await store.delete_stream("doomed")
        await store.append("events/a", [b"1"], T0)
    assert results == {"doomed": True, "wake/pool": True}


async def test_aclose_releases_waiters(store_url: str) -> None:
    store = open_store(store_url)
    await store.open()
    await store.create_stream("s", "application/json", T0)
    results: list[bool] = []

    async def wait() -> None:
        results.append(await store.wait_for_change("s", "now", 30))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await wait_until_parked(store)
            await store.aclose()
    assert results == [False]


async def test_concurrent_claims_from_two_stores_have_one_winner(
    store_factory: StoreFactory,
) -> None:
    first = await store_factory()
    second = await store_factory()
    stores = (first, second)
    await first.create_stream("events/a", "application/json", T0)
    await make_subscription(first)

    async def contend(index: int, wins: list[tuple[int, Claim]], losses: list[str]) -> None:
        try:
            claim = await stores[index % 2].claim("sub", f"w{index}", T0)
        except Conflict as exc:
            losses.append(exc.code)
        else:
            wins.append((index, claim))

    for round_number in range(6):
        await stores[round_number % 2].append("events/a", [b"%d" % round_number], T0)
        wins: list[tuple[int, Claim]] = []
        losses: list[str] = []
        async with anyio.create_task_group() as tg:
            for index in range(10):
                tg.start_soon(contend, index, wins, losses)
        assert len(wins) == 1, wins
        assert losses == ["ALREADY_CLAIMED"] * 9
        index, claim = wins[0]
        sub = await first.subscription("sub")
        assert (sub.holder, sub.generation) == (f"w{index}", claim.generation)
        # The winner acks through the other store instance and ends its claim.
        assert await ack_all(stores[(index + 1) % 2], "sub", claim) is False
        assert (await second.subscription("sub")).holder is None
    generations = [event["generation"] for event in await wake_events(first)]
    assert generations == list(range(1, 7))
