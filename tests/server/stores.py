"""Store fixtures for the contract tests: every test runs on SQLite and PostgreSQL.

Test modules import the fixtures they use from here (``from tests.server.stores import
store_fixture``): each is registered under its short name (``store``, ``store_factory``,
``store_url``), so the suite needs no shared ``conftest.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from pullwake.server.store import Store, open_store
from pullwake.server.store.base import AckItem, Claim, SubscriptionConfig
from pullwake.server.store.transactional import TransactionalStore

#: A fixed clock origin: tests pass explicit ``now_ms`` values, never read the wall clock.
T0 = 1_700_000_000_000

StoreFactory = Callable[[], Awaitable[Store]]

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(name="store_url", params=BACKENDS)
def store_url_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for an empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("postgres_dsn"))


@pytest.fixture(name="store_factory")
async def store_factory_fixture(store_url: str) -> AsyncIterator[StoreFactory]:
    """Open more stores on the same database (closed at the end of the test)."""
    opened: list[Store] = []

    async def make() -> Store:
        store = open_store(store_url)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in reversed(opened):
        await store.aclose()


@pytest.fixture(name="store")
async def store_fixture(store_factory: StoreFactory) -> Store:
    """An open store on a fresh database."""
    return await store_factory()


async def make_subscription(
    store: Store,
    sub_id: str = "sub",
    *,
    pattern: str | None = "events/*",
    streams: tuple[str, ...] = (),
    wake_stream: str = "wake/pool",
    lease_ttl_ms: int = 30_000,
    now_ms: int = T0,
) -> None:
    """Create a subscription (and its wake stream)."""
    config = SubscriptionConfig(
        wake_stream=wake_stream, pattern=pattern, streams=streams, lease_ttl_ms=lease_ttl_ms
    )
    created, _ = await store.put_subscription(sub_id, config, now_ms)
    assert created


async def wake_events(store: Store, wake_stream: str = "wake/pool") -> list[dict[str, object]]:
    """Every wake event in a wake stream, decoded."""
    result = await store.read(wake_stream, "-1", 10_000_000)
    return [json.loads(message.data) for message in result.messages]


async def ack_all(
    store: Store, sub_id: str, claim: Claim, *, done: bool = True, now_ms: int = T0
) -> bool:
    """Ack every linked stream of a claim to its tail; return ``next_wake``."""
    acks = [AckItem(link.path, link.tail_offset) for link in claim.streams]
    result = await store.ack(
        sub_id, claim.token, claim.wake_id, claim.generation, acks, done, now_ms
    )
    return result.next_wake


async def wait_until_parked(store: Store, waiters: int = 1) -> None:
    """Wait (bounded) until ``waiters`` wait_for_change calls are parked on the store."""
    assert isinstance(store, TransactionalStore)
    with anyio.fail_after(10):
        while store.statistics()["waiters"] < waiters:  # noqa: ASYNC110  (bounded test probe)
            await anyio.sleep(0.005)


def counting(store: TransactionalStore) -> list[str]:
    """Record the rule behind every store call from now on."""
    calls: list[str] = []
    real_call = store._call

    async def counting_call(body, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(body.__name__)
        return await real_call(body, *args, **kwargs)

    store._call = counting_call  # type: ignore[method-assign]
    return calls
