"""The wake-stream slot's promise: a response nobody took is closed, never left to block a connect.

``connect`` leaves the accepted wake-stream response in the run's :class:`StreamSlot` and
returns; the actor then posts ``connected``. If a ``stream_reset`` is processed first (the
heartbeats lost the server while the connect was finishing), the chart leaves ``connecting``,
``connected`` arrives late and is dropped, and nobody reads the response. The activities that
can meet it close it first (``backoff`` on the way to the next connect, ``connect`` itself).
Without that, the leftover leaks and, worse, the next connect's ``put`` finds the slot taken:
that connect fails, and so does every one after it (``connect_failed`` for ever).

The race is made deterministic with a seam in the test only: ``Run.connect`` is wrapped so
that, once, the real connect runs to its end (the response is in the slot) and the reset is
then queued *before* its ``connected``, exactly the order a heartbeat would race into. On a
``ManualClock`` that moves only when every task is blocked, every wait is bounded.
"""

from __future__ import annotations

import random
from typing import Any

import anyio
import httpx
import pytest

from pullwake.runtime import Runner, RunnerSettings
from pullwake.runtime.actor import ActivityContext, Outcome, TransitionRecord
from pullwake.runtime.backoff import Backoff
from pullwake.runtime.client import WakeStreamConnection
from pullwake.runtime.clock import ManualClock
from pullwake.runtime.run import Run

from .fakeserver import FakeServer

pytestmark = pytest.mark.anyio

HEARTBEAT = 100.0
BOUND = 10.0
#: Clock steps allowed to get back to ``streaming``: a recovery takes a handful (probe pause,
#: at most one backoff); a connect_failed loop never gets there.
STEPS = 12


async def ignore(claim: Any) -> None:
    return None


def make_runner(fake: FakeServer, clock: ManualClock, records: list[TransitionRecord]) -> Runner:
    return Runner(
        "http://fake",
        runner_id="r1",
        handler=ignore,
        wake_stream="wake/r1",
        grace=0.5,
        clock=clock,
        settings=RunnerSettings(
            heartbeat_interval=HEARTBEAT,
            backoff=Backoff(initial=1.0, maximum=1.0, jitter=0),
            stop_bound=0.5,
        ),
        transport=fake.transport(),
        inspect=records.append,
        rng=random.Random(5),
    )


def new_fake() -> FakeServer:
    fake = FakeServer()
    fake.subscribe("s", ["jobs/a"], "wake/r1")
    return fake


async def streaming_again(
    runner: Runner, clock: ManualClock, records: list[TransitionRecord]
) -> None:
    """Step the clock until the runner streams, failing (not hanging) after STEPS steps."""
    for _ in range(STEPS):
        await anyio.wait_all_tasks_blocked()
        if runner.state == "streaming":
            return
        deadline = clock.next_deadline()
        assert deadline is not None, f"nothing sleeps on the clock in {runner.state}"
        clock.advance(max(0.0, deadline - clock.now()))
    failed = kinds(records, "connect_failed").count("transition")
    raise AssertionError(
        f"not streaming again after {STEPS} clock steps ({runner.state}, "
        f"{failed} connect_failed): {runner.health()['last_error']}"
    )


def leftover() -> WakeStreamConnection:
    """An accepted wake-stream response that nobody will read."""
    response = httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=b"")
    return WakeStreamConnection(response, "GET", "http://fake/v1/stream/wake/r1")


def kinds(records: list[TransitionRecord], event: str) -> list[str]:
    return [r.kind for r in records if r.event == event]


async def test_a_connect_that_loses_the_connected_race_leaks_nothing_and_streams_again(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = new_fake()
    clock = ManualClock()
    records: list[TransitionRecord] = []
    connects: list[WakeStreamConnection | None] = []
    # At the start of each later connect: was the lost race's response closed already?
    closed_before_next_connect: list[bool] = []
    real_connect = Run.connect

    async def connect(self: Run, ctx: ActivityContext) -> Outcome | None:
        if connects:
            first = connects[0]
            closed_before_next_connect.append(first is not None and first.closed)
        outcome = await real_connect(self, ctx)
        if not connects:
            # The response is in the slot; queue the reset ahead of this connect's connected.
            connection = self.slot.take()
            connects.append(connection)
            assert connection is not None
            self.slot.put(connection)
            ctx.send("stream_reset")
        else:
            connects.append(None)
        return outcome

    monkeypatch.setattr(Run, "connect", connect)
    runner = make_runner(fake, clock, records)
    with anyio.fail_after(BOUND):
        async with runner:
            await anyio.wait_all_tasks_blocked()
            # The reset won: the chart went to server_gone, the connected came too late.
            assert runner.state == "server_gone"
            first = connects[0]
            assert first is not None
            closed_in_server_gone = first.closed
            await streaming_again(runner, clock, records)
            assert len(connects) == 2
            # Closed on the way out of connecting (by the backoff), not left for later.
            assert closed_in_server_gone
            assert closed_before_next_connect == [True]
            # The stream works: a wake goes through the second connect's response.
            fake.append("jobs/a", "m1")
            fake.wake("s")
            await anyio.wait_all_tasks_blocked()
            assert runner.health()["wakes_received"] >= 1
    assert kinds(records, "stream_reset") == ["transition"]
    assert kinds(records, "connected") == ["dropped", "transition"]
    assert kinds(records, "connect_failed") == []


async def test_a_connect_that_finds_a_response_left_in_the_slot_closes_it_and_connects(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connect's own discard: a response left in the slot (by any path) never blocks it.

    The chart's one path to a second connect passes the backoff, which closes a leftover
    first; this test leaves one in the slot at a connect's start directly, so the connect's
    own discard is what is checked.
    """
    fake = new_fake()
    clock = ManualClock()
    records: list[TransitionRecord] = []
    left = leftover()
    real_connect = Run.connect

    async def connect(self: Run, ctx: ActivityContext) -> Outcome | None:
        if not left.closed:
            self.slot.put(left)
        return await real_connect(self, ctx)

    monkeypatch.setattr(Run, "connect", connect)
    runner = make_runner(fake, clock, records)
    with anyio.fail_after(BOUND):
        async with runner:
            await streaming_again(runner, clock, records)
            assert left.closed
    assert kinds(records, "connect_failed") == []
    assert kinds(records, "connected") == ["transition"]
