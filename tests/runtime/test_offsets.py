"""The committed wake offset never passes a wake the claim pipeline has not accepted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pullwake.runtime.offsets import (
    FileOffsetStore,
    MemoryOffsetStore,
    RegistryOffsetStore,
    WakeCursor,
    default_offset_path,
)

pytestmark = pytest.mark.anyio


def test_the_cursor_commits_a_checkpoint_only_when_its_wakes_are_settled() -> None:
    cursor = WakeCursor("-1")
    first, second = cursor.ticket(), cursor.ticket()
    cursor.checkpoint("0005")
    assert (cursor.read, cursor.committed, cursor.outstanding) == ("0005", "-1", 2)
    third = cursor.ticket()
    cursor.checkpoint("0009")
    # A keepalive-like control event with no wakes before it.
    cursor.checkpoint("0010")
    third.settle()
    # The later batch is done, but the earlier one is not: no mid-batch loss.
    assert cursor.committed == "-1"
    first.settle()
    assert cursor.committed == "-1"
    second.settle()
    assert (cursor.committed, cursor.outstanding) == ("0010", 0)
    second.settle()
    assert cursor.committed == "0010"


def test_a_ticket_settled_before_its_checkpoint_does_not_hold_the_cursor() -> None:
    cursor = WakeCursor("0001")
    cursor.ticket().settle()
    cursor.checkpoint("0004")
    assert cursor.committed == "0004"


def test_tickets_without_a_checkpoint_hold_the_next_one() -> None:
    # A data event whose control event never came (the stream broke): its wakes are replayed
    # after the reconnect, and both the old and the new tickets gate the next checkpoint.
    cursor = WakeCursor("0001")
    lost_in_break = cursor.ticket()
    replayed = cursor.ticket()
    cursor.checkpoint("0004")
    replayed.settle()
    assert cursor.committed == "0001"
    lost_in_break.settle()
    assert cursor.committed == "0004"


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=3), st.booleans()), min_size=1, max_size=30
    ),
    st.randoms(use_true_random=False),
)
def test_committed_never_passes_an_unsettled_wake(
    batches: list[tuple[int, bool]], rng: object
) -> None:
    import random

    assert isinstance(rng, random.Random)
    cursor = WakeCursor("-1")
    # (checkpoint offset, ticket) of every wake, in stream order
    wakes = []
    for index, (count, _) in enumerate(batches):
        tickets = [cursor.ticket() for _ in range(count)]
        offset = f"{index + 1:04d}"
        cursor.checkpoint(offset)
        wakes.extend((offset, t) for t in tickets)
    order = list(range(len(wakes)))
    rng.shuffle(order)
    for position in order:
        wakes[position][1].settle()
        unsettled = [offset for offset, t in wakes if not t.settled]
        if unsettled:
            # Every wake in a batch at or before the committed offset is settled.
            assert cursor.committed < min(unsettled)
        else:
            assert cursor.committed == f"{len(batches):04d}"
        assert cursor.committed <= cursor.read


async def test_the_file_store_round_trips_and_replaces_atomically(
    tmp_path: Path, anyio_backend: str
) -> None:
    path = tmp_path / "nested" / "r.offset"
    store = FileOffsetStore(path)
    assert await store.load() is None
    await store.save("0007")
    await store.save("0009")
    assert path.read_text() == "0009\n"
    assert await FileOffsetStore(path).load() == "0009"
    # No temporary file is left beside it.
    assert os.listdir(path.parent) == ["r.offset"]


async def test_memory_and_registry_stores(anyio_backend: str) -> None:
    memory = MemoryOffsetStore()
    assert await memory.load() is None
    await memory.save("3")
    assert (await memory.load(), memory.saves) == ("3", 1)
    registry = RegistryOffsetStore()
    registry.seed("0042")
    assert await registry.load() == "0042"
    await registry.save("0043")
    assert await registry.load() == "0043"


def test_the_default_file_path_is_per_runner_and_safe(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_offset_path("worker 1/../x") == tmp_path / "pullwake" / "worker_1_.._x.offset"
