"""Writer sequencing (``Stream-Seq``) and idempotent producers, on SQLite and PostgreSQL, on
asyncio and trio: the store rules, their persistence across a reopen, racing writers, and the
HTTP answers of a real server restarted between two producer requests."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pullwake.server.errors import BadRequest, Conflict, Forbidden, StoreError
from pullwake.server.store import Store, open_store
from pullwake.server.store.base import Producer
from pullwake.server.store.schema import SCHEMA_VERSION_DDL, migrations
from pullwake.server.store.sqlite import split_statements
from tests.fixtures.servers import ServerFactory
from tests.server.stores import (
    T0,
    StoreFactory,
    store_factory_fixture,  # noqa: F401
    store_fixture,  # noqa: F401
    store_url_fixture,  # noqa: F401
)

TEXT = {"content-type": "text/plain"}


def _code(exc: pytest.ExceptionInfo[StoreError]) -> str:
    return exc.value.code


async def _data(store: Store, path: str) -> list[bytes]:
    return [m.data for m in (await store.read(path, "-1", 1 << 20)).messages]


@pytest.mark.anyio
async def test_producer_appends_once_per_sequence_number(store: Store) -> None:
    await store.create_stream("s", "text/plain", T0)
    first = await store.append("s", [b"a"], T0, producer=Producer("p", 0, 0))
    assert (first.duplicate, first.producer) == (False, Producer("p", 0, 0))
    await store.append("s", [b"b"], T0, producer=Producer("p", 0, 1))
    await store.append("s", [b"c"], T0, producer=Producer("p", 0, 2))
    # A retry of seq 1 appends nothing and names the highest accepted number, not the request's.
    retry = await store.append("s", [b"b"], T0, producer=Producer("p", 0, 1))
    assert retry.duplicate
    assert retry.producer == Producer("p", 0, 2)
    assert retry.next_offset == (await store.stream("s")).tail_offset
    assert retry.wakes == ()
    assert await _data(store, "s") == [b"a", b"b", b"c"]


@pytest.mark.anyio
async def test_producer_gaps_fencing_and_epochs(store: Store) -> None:
    await store.create_stream("s", "text/plain", T0)
    with pytest.raises(Conflict) as gap:
        await store.append("s", [b"x"], T0, producer=Producer("p", 0, 1))
    assert _code(gap) == "PRODUCER_SEQ_GAP"
    assert gap.value.headers == {"producer-expected-seq": "0", "producer-received-seq": "1"}
    await store.append("s", [b"a0"], T0, producer=Producer("p", 0, 0))
    with pytest.raises(Conflict) as gap:
        await store.append("s", [b"x"], T0, producer=Producer("p", 0, 2))
    assert gap.value.headers["producer-expected-seq"] == "1"
    # A new epoch starts at 0 ...
    with pytest.raises(BadRequest) as bad:
        await store.append("s", [b"x"], T0, producer=Producer("p", 1, 5))
    assert _code(bad) == "PRODUCER_EPOCH_SEQ"
    bumped = await store.append("s", [b"b0"], T0, producer=Producer("p", 1, 0))
    assert bumped.producer == Producer("p", 1, 0)
    # ... and fences the old one, whatever its sequence number.
    for seq in (0, 1, 2):
        with pytest.raises(Forbidden) as fenced:
            await store.append("s", [b"zombie"], T0, producer=Producer("p", 0, seq))
        assert _code(fenced) == "PRODUCER_FENCED"
        assert fenced.value.headers == {"producer-epoch": "1"}
    # Producers are independent, and per stream.
    await store.append("s", [b"q0"], T0, producer=Producer("q", 7, 0))
    await store.create_stream("t", "text/plain", T0)
    await store.append("t", [b"t0"], T0, producer=Producer("p", 0, 0))
    assert await _data(store, "s") == [b"a0", b"b0", b"q0"]
    assert await _data(store, "t") == [b"t0"]


@pytest.mark.anyio
async def test_a_refused_producer_append_changes_nothing(store: Store) -> None:
    await store.create_stream("s", "application/json", T0)
    await store.append("s", [b"1"], T0, producer=Producer("p", 0, 0))
    with pytest.raises(Conflict) as exc:
        await store.append("s", [b"2"], T0, content_type="text/plain", producer=Producer("p", 0, 1))
    assert _code(exc) == "CONTENT_TYPE_MISMATCH"
    # seq 1 was not consumed by the refused append.
    accepted = await store.append("s", [b"2"], T0, producer=Producer("p", 0, 1))
    assert not accepted.duplicate
    with pytest.raises(BadRequest):
        await store.append("s", [b"3"], T0, producer=Producer("", 0, 2))
    assert await _data(store, "s") == [b"1", b"2"]


@pytest.mark.anyio
async def test_stream_seq_must_increase_byte_wise(store: Store) -> None:
    await store.create_stream("s", "text/plain", T0)
    await store.append("s", [b"a"], T0, writer_seq="09")
    await store.append("s", [b"b"], T0, writer_seq="10")
    for stale in ("10", "09", "1", "0"):
        with pytest.raises(Conflict) as exc:
            await store.append("s", [b"x"], T0, writer_seq=stale)
        assert _code(exc) == "STREAM_SEQ_CONFLICT"
    await store.append("s", [b"c"], T0, writer_seq="2")  # "2" > "10" byte-wise
    await store.append("s", [b"d"], T0)  # without Stream-Seq: no check, nothing moves
    await store.append("s", [b"e"], T0, writer_seq="a")
    with pytest.raises(Conflict):
        await store.append("s", [b"x"], T0, writer_seq="B")  # case-sensitive: "B" < "a"
    assert await _data(store, "s") == [b"a", b"b", b"c", b"d", b"e"]


@pytest.mark.anyio
async def test_a_producer_retry_is_answered_before_stream_seq(store: Store) -> None:
    await store.create_stream("s", "text/plain", T0)
    await store.append("s", [b"a"], T0, writer_seq="001", producer=Producer("p", 0, 0))
    retry = await store.append("s", [b"a"], T0, writer_seq="001", producer=Producer("p", 0, 0))
    assert retry.duplicate
    with pytest.raises(Conflict) as exc:
        await store.append("s", [b"b"], T0, writer_seq="001", producer=Producer("p", 0, 1))
    assert _code(exc) == "STREAM_SEQ_CONFLICT"
    # The refused append did not take seq 1.
    await store.append("s", [b"b"], T0, writer_seq="002", producer=Producer("p", 0, 1))
    assert await _data(store, "s") == [b"a", b"b"]


@pytest.mark.anyio
async def test_racing_writers_get_each_slot_once(store_factory: StoreFactory) -> None:
    """Writers on two stores (two connections) race for the same sequence numbers."""
    stores = [await store_factory(), await store_factory()]
    await stores[0].create_stream("s", "text/plain", T0)
    outcomes: list[str] = []

    async def write(index: int, seq: int) -> None:
        store = stores[index % 2]
        try:
            result = await store.append(
                "s", [f"{seq}-{index}".encode()], T0, producer=Producer("p", 0, seq)
            )
            outcomes.append("dup" if result.duplicate else "ok")
        except Conflict:
            outcomes.append("gap")

    with anyio.fail_after(30):
        for seq in range(4):
            async with anyio.create_task_group() as tg:
                for index in range(4):
                    tg.start_soon(write, index, seq)
        async with anyio.create_task_group() as tg:
            for index in range(6):
                tg.start_soon(
                    lambda i=index: _stream_seq_write(stores[i % 2], f"w-{i:02d}", outcomes)
                )
    assert outcomes.count("ok") == 4
    assert outcomes.count("dup") == 12
    data = await _data(stores[1], "s")
    assert [d.split(b"-")[0] for d in data[:4]] == [b"0", b"1", b"2", b"3"]
    # Every accepted Stream-Seq write is in the stream; refused ones are not.
    seq_ok = outcomes.count("seq-ok")
    assert seq_ok >= 1
    assert seq_ok + outcomes.count("seq-409") == 6
    assert len(data) == 4 + seq_ok


async def _stream_seq_write(store: Store, seq: str, outcomes: list[str]) -> None:
    try:
        await store.append("s", [seq.encode()], T0, writer_seq=seq)
        outcomes.append("seq-ok")
    except Conflict:
        outcomes.append("seq-409")


@pytest.mark.anyio
async def test_producer_and_stream_seq_state_survive_a_reopen(store_url: str) -> None:
    first = open_store(store_url)
    await first.open()
    try:
        await first.create_stream("s", "text/plain", T0)
        await first.append("s", [b"a"], T0, producer=Producer("p", 3, 0), writer_seq="m")
        await first.append("s", [b"b"], T0, producer=Producer("p", 3, 1))
    finally:
        await first.aclose()
    second = open_store(store_url)
    await second.open()
    try:
        retry = await second.append("s", [b"b"], T0, producer=Producer("p", 3, 1))
        assert (retry.duplicate, retry.producer) == (True, Producer("p", 3, 1))
        with pytest.raises(Forbidden):
            await second.append("s", [b"z"], T0, producer=Producer("p", 2, 0))
        with pytest.raises(Conflict):
            await second.append("s", [b"z"], T0, writer_seq="a")
        await second.append("s", [b"c"], T0, producer=Producer("p", 3, 2), writer_seq="n")
        assert await _data(second, "s") == [b"a", b"b", b"c"]
        # Deleting the stream forgets its producers: a new stream starts afresh.
        await second.delete_stream("s")
        await second.create_stream("s", "text/plain", T0)
        fresh = await second.append("s", [b"x"], T0, producer=Producer("p", 0, 0), writer_seq="a")
        assert not fresh.duplicate
    finally:
        await second.aclose()


_names = itertools.count()

#: (producer id, epoch, seq, Stream-Seq or None) for one append.
_writes = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.integers(0, 2),
        st.integers(0, 3),
        st.none() | st.sampled_from(["1", "2", "10", "B", "a"]),
    ),
    max_size=25,
)


@pytest.mark.anyio
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(writes=_writes)
async def test_random_writer_sequences_keep_the_invariants(
    store: Store, writes: list[tuple[str, int, int, str | None]]
) -> None:
    """Whatever the order of producer and Stream-Seq appends, each is answered as the spec
    says given the producer's last accepted (epoch, seq) and the last accepted Stream-Seq
    (fenced, duplicate, gap, bad new epoch, Stream-Seq conflict, or appended), a duplicate
    reports the last accepted state, and the stream holds exactly the appended ones, in
    order."""
    path = f"r{next(_names)}"
    await store.create_stream(path, "application/octet-stream", T0)
    accepted: list[bytes] = []
    last: dict[str, tuple[int, int]] = {}
    seqs: list[str] = []
    for index, (name, epoch, seq, writer_seq) in enumerate(writes):
        body = f"{index}".encode()
        known = last.get(name)
        # What the spec says must happen, from the producer's last accepted (epoch, seq).
        if known is not None and epoch < known[0]:
            expected = "PRODUCER_FENCED"
        elif known is not None and epoch == known[0] and seq <= known[1]:
            expected = "duplicate"
        elif known is not None and epoch == known[0] and seq > known[1] + 1:
            expected = "PRODUCER_SEQ_GAP"
        elif seq != 0 and (known is None or epoch > known[0]):
            expected = "PRODUCER_SEQ_GAP" if known is None else "PRODUCER_EPOCH_SEQ"
        elif writer_seq is not None and seqs and writer_seq.encode() <= seqs[-1].encode():
            expected = "STREAM_SEQ_CONFLICT"
        else:
            expected = "appended"
        try:
            result = await store.append(
                path, [body], T0, writer_seq=writer_seq, producer=Producer(name, epoch, seq)
            )
        except StoreError as exc:
            outcome = exc.code
        else:
            outcome = "duplicate" if result.duplicate else "appended"
            if result.duplicate:
                assert result.producer == Producer(name, *last[name])
        assert outcome == expected, (index, writes[: index + 1])
        if outcome == "appended":
            last[name] = (epoch, seq)
            if writer_seq is not None:
                seqs.append(writer_seq)
            accepted.append(body)
    assert await _data(store, path) == accepted


def _produce(client: httpx.Client, seq: int, epoch: int = 0, body: str = "") -> httpx.Response:
    headers = {**TEXT, "Producer-Id": "p", "Producer-Epoch": str(epoch), "Producer-Seq": str(seq)}
    return client.post("/v1/stream/s", headers=headers, content=body or f"m{seq}")


def test_producer_state_survives_a_server_restart(
    server_factory: ServerFactory, database_url: str
) -> None:
    server = server_factory(database_url)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.put("/v1/stream/s", headers=TEXT).status_code == 201
        first = _produce(client, 0, epoch=2)
        assert first.status_code == 200
        assert (first.headers["producer-epoch"], first.headers["producer-seq"]) == ("2", "0")
        assert _produce(client, 1, epoch=2).status_code == 200
    server.restart()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        retry = _produce(client, 0, epoch=2)
        assert retry.status_code == 204
        assert retry.headers["producer-seq"] == "1"
        stale = _produce(client, 2, epoch=1)
        assert stale.status_code == 403
        assert stale.headers["producer-epoch"] == "2"
        assert stale.json()["error"]["code"] == "PRODUCER_FENCED"
        gap = _produce(client, 5, epoch=2)
        assert gap.status_code == 409
        assert gap.headers["producer-expected-seq"] == "2"
        assert _produce(client, 2, epoch=2).status_code == 200
        assert client.get("/v1/stream/s").text == "m0m1m2"


MALFORMED_WRITER_HEADERS = [
    {"Producer-Id": "p"},
    {"Producer-Epoch": "0", "Producer-Seq": "0"},
    {"Producer-Id": "p", "Producer-Epoch": "0", "Producer-Seq": "1abc"},
    {"Producer-Id": "p", "Producer-Epoch": "1e3", "Producer-Seq": "0"},
    {"Producer-Id": "p", "Producer-Epoch": "-1", "Producer-Seq": "0"},
    {"Producer-Id": "p", "Producer-Epoch": "0", "Producer-Seq": "9" * 19},
    {"Producer-Id": "", "Producer-Epoch": "0", "Producer-Seq": "0"},
    {"Stream-Seq": ""},
]


def test_malformed_writer_headers_are_400(server_factory: ServerFactory) -> None:
    server = server_factory()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        client.put("/v1/stream/s", headers=TEXT)
        for headers in MALFORMED_WRITER_HEADERS:
            response = client.post("/v1/stream/s", headers={**TEXT, **headers}, content="x")
            assert response.status_code == 400, (headers, response.text)
            code = response.json()["error"]["code"]
            assert code in ("INVALID_PRODUCER", "INVALID_STREAM_SEQ"), (headers, code)
        # Writer headers belong on appends: a create with them is refused, not half-honoured.
        refused = client.put("/v1/stream/t", headers={**TEXT, "Stream-Seq": "1"})
        assert refused.status_code == 400
        assert client.get("/v1/stream/s").text == ""


@pytest.mark.anyio
async def test_a_database_made_before_producers_is_upgraded(tmp_path: Path) -> None:
    """A SQLite file at migration 0001 (with a stream and messages) gains 0002 on open."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    conn.execute(SCHEMA_VERSION_DDL)
    first = migrations("sqlite")[0]
    for statement in split_statements(first.sql):
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (1, ?, 0)", (first.name,))
    conn.execute(
        "INSERT INTO streams (path, content_type, created_at_ms, tail_seq) "
        "VALUES ('s', 'text/plain', 0, 0)"
    )
    conn.close()
    store = open_store(url)
    await store.open()
    try:
        await store.append("s", [b"a"], T0, producer=Producer("p", 0, 0), writer_seq="1")
        retry = await store.append("s", [b"a"], T0, producer=Producer("p", 0, 0))
        assert retry.duplicate
    finally:
        await store.aclose()
