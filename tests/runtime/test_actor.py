"""The actor runs the lifecycle chart with state-owned scopes, on asyncio and trio.

Fake activities stand in for the runner's: each records when it starts and when its task
really ends, and waits on a gate the test controls, so every change of configuration in these
tests comes from an event the test sent and nothing races with the assertions.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pullwake.machines import LIFECYCLE, UnknownEventError
from pullwake.runtime.actor import ActivityContext, Actor, Outcome, TransitionRecord
from pullwake.runtime.clock import ManualClock
from pullwake.runtime.errors import ActorError

pytestmark = pytest.mark.anyio


class FakeActivities:
    """Activities that park until released, and a log of what really ran."""

    def __init__(self) -> None:
        # Invariant: names of activity tasks that have started and not yet ended.
        self.alive: set[str] = set()
        self.started: list[str] = []
        self.contexts: dict[str, ActivityContext] = {}
        self.outcomes: dict[str, str | None] = {}
        self.gates: dict[str, anyio.Event] = {}

    def release(self, name: str, outcome: str | None = None) -> None:
        """Let the parked activity ``name`` return ``outcome``."""
        self.outcomes[name] = outcome
        self.gates[name].set()

    def table(self) -> dict[str, Callable[[ActivityContext], object]]:
        def make(name: str) -> Callable[[ActivityContext], object]:
            async def activity(ctx: ActivityContext) -> str | None:
                self.alive.add(name)
                self.started.append(name)
                self.contexts[name] = ctx
                self.gates[name] = anyio.Event()
                try:
                    await self.gates[name].wait()
                    return self.outcomes.get(name)
                finally:
                    self.alive.discard(name)

            return activity

        return {a.name: make(a.name) for owned in LIFECYCLE.activities.values() for a in owned}


def assert_owned(actor: Actor, fakes: FakeActivities) -> None:
    """No activity task outlives its state, and every state's activities are running."""
    expected = set(LIFECYCLE.activities_of(actor.configuration))
    assert fakes.alive <= expected
    assert set(actor.owned_activities()) == expected


#: Seconds any one wait of these tests may take: a regression fails with a message, never hangs.
BOUND = 5.0


async def reach(actor: Actor, state: str) -> None:
    """Wait (bounded) until ``state`` is active."""
    with anyio.fail_after(BOUND):
        await actor.wait_state(state)


async def settle() -> None:
    """Let freshly started activity tasks reach their first checkpoint."""
    for _ in range(5):
        await anyio.lowlevel.checkpoint()


async def test_start_opens_the_running_and_connecting_scopes() -> None:
    fakes = FakeActivities()
    records: list[TransitionRecord] = []
    async with Actor(LIFECYCLE, fakes.table(), inspect=records.append) as actor:
        record = await actor.send("start")
        await settle()
        assert actor.configuration == ("running", "connecting")
        assert record.kind == "transition"
        assert record.started == ("heartbeat", "connect")
        assert record.cancelled == ()
        assert fakes.alive == {"heartbeat", "connect"}
        assert records == [record]


async def test_stream_reset_aborts_a_hung_connect_within_one_event() -> None:
    fakes = FakeActivities()
    async with Actor(LIFECYCLE, fakes.table()) as actor:
        await actor.send("start")
        await settle()
        assert "connect" in fakes.alive  # the connect hangs: its gate is never released
        record = await actor.send("stream_reset")
        # By the time the event has been processed, the connect task has really ended.
        assert "connect" not in fakes.alive
        assert record.cancelled == ("connect",)
        assert record.reason == "left connecting on stream_reset"
        assert actor.configuration == ("running", "reconnecting", "server_gone")
        await settle()
        assert fakes.alive == {"heartbeat", "backoff", "probe"}


async def test_activity_outcome_becomes_its_declared_event() -> None:
    fakes = FakeActivities()
    async with Actor(LIFECYCLE, fakes.table()) as actor:
        await actor.send("start")
        await settle()
        fakes.release("connect")  # returns None: the declared done event, "connected"
        await reach(actor, "streaming")
        await settle()
        assert fakes.alive == {"heartbeat", "read_stream"}
        fakes.release("read_stream", "stream_reset")  # an activity may name its own outcome
        await reach(actor, "reconnecting")
        assert actor.configuration == ("running", "reconnecting", "server_gone")


async def test_an_outcome_carries_its_error_into_the_record() -> None:
    records: list[TransitionRecord] = []
    refusal = PermissionError("401: bad token")

    async def connect(ctx: ActivityContext) -> Outcome:
        return Outcome("rejected", refusal)

    fakes = FakeActivities()
    table = fakes.table() | {"connect": connect}
    async with Actor(LIFECYCLE, table, inspect=records.append) as actor:
        await actor.send("start")
        await reach(actor, "stopping")
        rejected = records[-1]
        assert (rejected.kind, rejected.event, rejected.origin, rejected.target) == (
            "transition",
            "rejected",
            "connect",
            ("stopping",),
        )
        assert rejected.error is refusal


async def test_an_external_event_carries_its_error_into_the_record() -> None:
    records: list[TransitionRecord] = []
    refusal = PermissionError("403")
    fakes = FakeActivities()
    async with Actor(LIFECYCLE, fakes.table(), inspect=records.append) as actor:
        await actor.send("start")
        actor.send_nowait("rejected", error=refusal)
        await reach(actor, "stopping")
        assert (records[-1].event, records[-1].error) == ("rejected", refusal)


async def test_failing_activity_sends_its_error_event_and_the_actor_lives() -> None:
    records: list[TransitionRecord] = []
    boom = OSError("connection refused")

    async def connect(ctx: ActivityContext) -> str | None:
        raise boom

    fakes = FakeActivities()
    table = fakes.table() | {"connect": connect}
    async with Actor(LIFECYCLE, table, inspect=records.append) as actor:
        await actor.send("start")
        await reach(actor, "after_answer")
        failure = records[-1]
        assert (failure.kind, failure.event, failure.origin) == (
            "transition",
            "connect_failed",
            "connect",
        )
        assert failure.error is boom
        assert actor.configuration == ("running", "reconnecting", "after_answer")


async def test_failure_without_error_event_is_recorded_not_fatal() -> None:
    records: list[TransitionRecord] = []

    async def heartbeat(ctx: ActivityContext) -> str | None:
        raise RuntimeError("bug in the heartbeat")

    fakes = FakeActivities()
    async with Actor(
        LIFECYCLE, fakes.table() | {"heartbeat": heartbeat}, inspect=records.append
    ) as actor:
        await actor.send("start")
        await settle()
        failed = [r for r in records if r.kind == "failed"]
        assert len(failed) == 1
        assert failed[0].origin == "heartbeat"
        assert isinstance(failed[0].error, RuntimeError)
        assert actor.statistics().activity_failures == 1
        # The actor still processes events.
        await actor.send("stop")
        assert actor.configuration == ("stopping",)


async def test_late_result_of_a_cancelled_activity_is_dropped() -> None:
    fakes = FakeActivities()
    records: list[TransitionRecord] = []
    async with Actor(LIFECYCLE, fakes.table(), inspect=records.append) as actor:
        await actor.send("start")
        await settle()
        connect = fakes.contexts["connect"]
        # The reset is queued first; the connect's success lands right behind it.
        actor.send_nowait("stream_reset")
        connect.send("connected")
        await reach(actor, "reconnecting")
        with anyio.fail_after(BOUND):
            while actor.statistics().events < 3:
                await anyio.lowlevel.checkpoint()
        dropped = records[-1]
        assert dropped.kind == "dropped"
        assert (dropped.event, dropped.origin) == ("connected", "connect")
        assert actor.configuration == ("running", "reconnecting", "server_gone")
        assert actor.statistics().dropped == 1


async def test_result_posted_while_being_cancelled_is_dropped() -> None:
    records: list[TransitionRecord] = []

    async def connect(ctx: ActivityContext) -> str | None:
        try:
            await anyio.sleep_forever()
        finally:
            # A careless activity that reports success on its way out.
            ctx.send("connected")
        return None

    fakes = FakeActivities()
    async with Actor(
        LIFECYCLE, fakes.table() | {"connect": connect}, inspect=records.append
    ) as actor:
        await actor.send("start")
        await settle()
        await actor.send("stop")
        await settle()
        assert [r.kind for r in records if r.event == "connected"] == ["dropped"]
        assert actor.configuration == ("stopping",)


async def test_activity_ignoring_cancellation_is_recorded_as_leaked() -> None:
    async def connect(ctx: ActivityContext) -> str | None:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.3)
        return None

    fakes = FakeActivities()
    async with Actor(LIFECYCLE, fakes.table() | {"connect": connect}, exit_timeout=0.05) as actor:
        await actor.send("start")
        await settle()
        record = await actor.send("stream_reset")
        assert record.leaked == ("connect",)
        assert actor.statistics().leaked == 1
        assert actor.configuration == ("running", "reconnecting", "server_gone")


async def test_ignored_and_unknown_events() -> None:
    fakes = FakeActivities()
    async with Actor(LIFECYCLE, fakes.table()) as actor:
        record = await actor.send("stop")
        assert (record.kind, record.source, record.target) == (
            "ignored",
            ("stopped",),
            ("stopped",),
        )
        with pytest.raises(UnknownEventError, match="declares no event 'explode'"):
            actor.send_nowait("explode")
        assert actor.statistics().ignored == 1


async def test_backoff_runs_on_the_injected_clock() -> None:
    clock = ManualClock()

    async def backoff(ctx: ActivityContext) -> str | None:
        await ctx.clock.sleep(30.0)
        return None

    fakes = FakeActivities()
    async with Actor(LIFECYCLE, fakes.table() | {"backoff": backoff}, clock=clock) as actor:
        await actor.send("start")
        await actor.send("connect_failed")
        with anyio.fail_after(BOUND):
            await clock.wait_sleepers(1)
        clock.advance(29.9)
        await settle()
        assert actor.state == "after_answer"
        clock.advance(0.1)
        await reach(actor, "connecting")
        assert clock.sleepers() == 0


@pytest.mark.parametrize(
    "path",
    [
        (),
        ("start",),
        ("start", "connected"),
        ("start", "connect_failed"),
        ("start", "server_lost"),
        ("start", "connect_failed", "stream_reset"),
        ("start", "connected", "stream_ended"),
        ("start", "stop"),
    ],
)
async def test_stop_from_any_configuration_reaches_stopped(path: tuple[str, ...]) -> None:
    fakes = FakeActivities()
    async with Actor(LIFECYCLE, fakes.table()) as actor:
        for event in path:
            await actor.send(event)
        await settle()
        await actor.send("stop")
        if actor.state == "stopping":
            await settle()
            fakes.release("drain")
        await reach(actor, "stopped")
        await settle()
        assert fakes.alive == set()
        assert actor.open_activities() == ()


async def test_leaving_the_block_cancels_everything() -> None:
    fakes = FakeActivities()
    async with Actor(LIFECYCLE, fakes.table()) as actor:
        await actor.send("start")
        await actor.send("connect_failed")
        await settle()
        assert fakes.alive == {"heartbeat", "backoff"}
    assert fakes.alive == set()
    with pytest.raises(ActorError, match=r"not running|closed"):
        actor.send_nowait("start")


async def test_activity_table_must_match_the_chart() -> None:
    fakes = FakeActivities()
    table = fakes.table()
    del table["drain"]
    with pytest.raises(ActorError, match=r"missing \['drain'\]"):
        Actor(LIFECYCLE, table)


# Property: under any sequence of events, no activity task outlives its state, every active
# state's activities are running, and the configuration matches the pure chart's decision.


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(events=st.lists(st.sampled_from(LIFECYCLE.events()), max_size=25))
async def test_random_event_sequences_keep_scopes_owned(events: list[str]) -> None:
    fakes = FakeActivities()
    async with Actor(LIFECYCLE, fakes.table()) as actor:
        configuration = actor.configuration
        for event in events:
            record = await actor.send(event)
            await settle()
            expected = LIFECYCLE.decide(configuration, event)
            assert record.target == expected.configuration
            assert record.kind == expected.kind
            configuration = actor.configuration
            assert configuration == expected.configuration
            assert_owned(actor, fakes)
        # Stop always reaches stopped from wherever the sequence left us.
        await actor.send("stop")
        if actor.state == "stopping":
            await settle()
            fakes.release("drain")
        await reach(actor, "stopped")
        await settle()
        assert fakes.alive == set()
