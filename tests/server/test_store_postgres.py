"""What only PostgreSQL promises: notifications across server processes, concurrent openers,
and surviving a database restart."""

from __future__ import annotations

import anyio
import psycopg
import pytest

from pullwake.server.errors import Conflict, StoreUnavailable
from pullwake.server.store import rules
from pullwake.server.store.base import SubscriptionConfig
from pullwake.server.store.postgres import PostgresStore, PostgresTransaction
from pullwake.server.store.schema import migrations
from tests.fixtures.postgres import PostgresServer
from tests.server.stores import T0, wait_until_parked, wake_events

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


async def test_a_notify_from_one_store_wakes_a_waiter_on_another(postgres_dsn: str) -> None:
    async with PostgresStore(postgres_dsn) as writer, PostgresStore(postgres_dsn) as reader:
        await writer.create_stream("events/a", "application/json", T0)
        await writer.put_subscription(
            "sub", SubscriptionConfig(wake_stream="wake/pool", pattern="events/*"), T0
        )
        results: dict[str, bool] = {}

        async def wait(path: str) -> None:
            results[path] = await reader.wait_for_change(path, "now", 30)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait, "events/a")
                tg.start_soon(wait, "wake/pool")
                await wait_until_parked(reader, 2)
                await writer.append("events/a", [b"1"], T0)
        assert results == {"events/a": True, "wake/pool": True}
        assert len(await wake_events(reader)) == 1


async def test_concurrent_openers_migrate_once(postgres_dsn: str) -> None:
    stores = [PostgresStore(postgres_dsn, connections=2) for _ in range(4)]
    try:
        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(store.open)
        await stores[0].create_stream("s", "text/plain", T0)
        for store in stores[1:]:
            assert (await store.stream("s")).path == "s"
    finally:
        for store in stores:
            await store.aclose()
    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute(
            "SELECT version FROM pullwake.schema_version ORDER BY version"
        ).fetchall()
    assert rows == [(migration.version,) for migration in migrations("postgres")]


async def test_many_concurrent_claims_across_stores_never_double_claim(postgres_dsn: str) -> None:
    async with (
        PostgresStore(postgres_dsn) as first,
        PostgresStore(postgres_dsn) as second,
        PostgresStore(postgres_dsn) as third,
    ):
        stores = (first, second, third)
        await first.create_stream("events/a", "application/json", T0)
        await first.put_subscription(
            "sub", SubscriptionConfig(wake_stream="wake/pool", pattern="events/*"), T0
        )
        await first.append("events/a", [b"1"], T0)
        winners: list[str] = []
        codes: list[str] = []

        async def contend(index: int) -> None:
            try:
                await stores[index % 3].claim("sub", f"w{index}", T0)
            except Conflict as exc:
                codes.append(exc.code)
            else:
                winners.append(f"w{index}")

        async with anyio.create_task_group() as tg:
            for index in range(30):
                tg.start_soon(contend, index)
        assert len(winners) == 1
        assert codes == ["ALREADY_CLAIMED"] * 29
        assert (await third.subscription("sub")).holder == winners[0]


async def test_the_store_recovers_after_a_database_restart(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    async with PostgresStore(postgres_dsn, timeout=2.0) as store:
        await store.create_stream("s", "application/json", T0)
        await store.append("s", [b"before"], T0)

        postgres_server.stop()
        with pytest.raises(StoreUnavailable) as exc:
            await store.append("s", [b"lost"], T0)
        assert exc.value.status == 503
        postgres_server.start()

        # The pool replaces its dead connections; the listener reconnects on its own.
        with anyio.fail_after(30):
            while True:
                try:
                    await store.append("s", [b"after"], T0)
                    break
                except StoreUnavailable:
                    await anyio.sleep(0.1)  # the database is still starting
        result = await store.read("s", "-1", 10_000)
        assert [m.data for m in result.messages] == [b"before", b"after"]

        # Change notification still crosses stores after the restart.
        async with PostgresStore(postgres_dsn) as other:
            results: list[bool] = []

            async def wait() -> None:
                results.append(await store.wait_for_change("s", "now", 30))

            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(wait)
                    await wait_until_parked(store)
                    await other.append("s", [b"from other"], T0)
            assert results == [True]


async def test_opening_an_unreachable_database_is_unavailable() -> None:
    store = PostgresStore("postgresql://nobody@127.0.0.1:1/none", timeout=1.0)
    with anyio.fail_after(20):
        with pytest.raises(StoreUnavailable):
            await store.open()
    await store.aclose()


async def test_a_subscription_created_during_an_append_misses_no_work(postgres_dsn: str) -> None:
    """An append still in flight when a subscription links its stream is not lost.

    The append runs by hand in an open transaction; the subscription is created meanwhile. It
    must wait for the append (the stream's row lock) and link at the new tail; otherwise it
    would link at the old tail, after the append looked for subscriptions to wake.
    """
    async with PostgresStore(postgres_dsn) as store:
        await store.create_stream("events/a", "application/json", T0)
        with psycopg.connect(postgres_dsn) as conn:
            conn.execute("SET search_path TO pullwake")
            with conn.cursor() as cursor:
                rules.append(PostgresTransaction(cursor), "events/a", [b"racing"], T0)
            config = SubscriptionConfig(wake_stream="wake/pool", pattern="events/*")
            done = anyio.Event()

            async def subscribe() -> None:
                await store.put_subscription("late", config, T0)
                done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(subscribe)
                with anyio.move_on_after(1):  # bounded: a correct store blocks here
                    await done.wait()
                assert not done.is_set(), "the subscription did not wait for the append"
                conn.commit()
        sub = await store.subscription("late")
        assert [link.has_pending for link in sub.streams] == [False]
        assert sub.wake_id is None
