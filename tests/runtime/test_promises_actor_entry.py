"""The actor's promises at entry and for events sent by activities (found by ``make mutate``).

- Entering an actor starts the activities its *initial* configuration owns, each with its own
  name and owning state (the lifecycle's ``stopped`` owns none, so a chart of its own shows it).
- An actor is entered once: a second entry, while open or after it closed, is refused.
- An event an activity sends carries the failure given with it into its record, and an
  external event's record says it came from outside.
"""

from __future__ import annotations

import anyio
import pytest
from statemachine import State, StateChart

from pullwake.machines import LIFECYCLE, Activity, ChartSpec
from pullwake.runtime.actor import ActivityContext, Actor, ActorError, TransitionRecord

pytestmark = pytest.mark.anyio

BOUND = 5.0


class Lamp(StateChart):  # type: ignore[type-arg]
    """On until switched off; while on it glows."""

    allow_event_without_transition = False
    catch_errors_as_events = False

    on = State(initial=True)
    off = State()

    flip = on.to(off) | off.to(on)


LAMP = ChartSpec(
    Lamp,
    activities={"on": (Activity("glow"),)},
    ignored={"on": frozenset(), "off": frozenset()},
    name="lamp",
)


async def test_entering_starts_the_initial_configurations_activities(
    anyio_backend: str,
) -> None:
    started: list[tuple[str, str]] = []

    async def glow(ctx: ActivityContext) -> None:
        started.append((ctx.name, ctx.state))
        await anyio.sleep_forever()

    with anyio.fail_after(BOUND):
        async with Actor(LAMP, {"glow": glow}) as actor:
            await anyio.wait_all_tasks_blocked()
            assert started == [("glow", "on")]
            assert actor.open_activities() == ("glow",)
            record = await actor.send("flip")
            assert record.cancelled == ("glow",)
            assert actor.open_activities() == ()
            await actor.send("flip")
            await anyio.wait_all_tasks_blocked()
            assert started == [("glow", "on"), ("glow", "on")]


async def test_an_actor_is_entered_only_once(anyio_backend: str) -> None:
    async def glow(ctx: ActivityContext) -> None:
        await anyio.sleep_forever()

    actor = Actor(LAMP, {"glow": glow})
    with anyio.fail_after(BOUND):
        async with actor:
            with pytest.raises(ActorError, match="entered only once"):
                await actor.__aenter__()
        with pytest.raises(ActorError, match="entered only once"):
            async with actor:
                pass


def parked() -> dict[str, object]:
    async def park(ctx: ActivityContext) -> None:
        await anyio.sleep_forever()

    return {a.name: park for owned in LIFECYCLE.activities.values() for a in owned}


async def test_an_activitys_event_carries_its_failure_and_an_external_one_says_so(
    anyio_backend: str,
) -> None:
    failure = ConnectionResetError("reset by peer")
    records: list[TransitionRecord] = []
    activities = parked()

    async def connect(ctx: ActivityContext) -> None:
        ctx.send("server_lost", error=failure)
        await anyio.sleep_forever()

    activities["connect"] = connect
    with anyio.fail_after(BOUND):
        async with Actor(LIFECYCLE, activities, inspect=records.append) as actor:  # type: ignore[arg-type]
            start = await actor.send("start")
            await actor.wait_state("server_gone")
    assert start.origin == "external"
    assert start.error is None
    (lost,) = [r for r in records if r.event == "server_lost"]
    assert lost.kind == "transition"
    assert lost.origin == "connect"
    assert lost.error is failure


async def test_a_waiter_is_told_when_the_actor_closes_under_it(anyio_backend: str) -> None:
    async def glow(ctx: ActivityContext) -> None:
        await anyio.sleep_forever()

    told: list[BaseException] = []

    async def wait_for_off(actor: Actor) -> None:
        try:
            await actor.wait_state("off")
        except ActorError as exc:
            told.append(exc)

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg, Actor(LAMP, {"glow": glow}) as actor:
            tg.start_soon(wait_for_off, actor)
            await anyio.wait_all_tasks_blocked()
    assert len(told) == 1
    assert "closed before reaching 'off'" in str(told[0])


async def test_every_late_event_is_dropped_and_counted_and_an_ignored_one_is_named(
    anyio_backend: str,
) -> None:
    contexts: list[ActivityContext] = []

    async def glow(ctx: ActivityContext) -> None:
        contexts.append(ctx)
        await anyio.sleep_forever()

    records: list[TransitionRecord] = []
    with anyio.fail_after(BOUND):
        async with Actor(LAMP, {"glow": glow}, inspect=records.append) as actor:
            await anyio.wait_all_tasks_blocked()
            await actor.send("flip")  # glow is cancelled: its context is stale now
            (stale,) = contexts
            stale.send("flip")
            stale.send("flip")
            await anyio.wait_all_tasks_blocked()
            assert actor.state == "off"
            assert actor.statistics().dropped == 2
    dropped = [r for r in records if r.kind == "dropped"]
    assert [(r.event, r.origin) for r in dropped] == [("flip", "glow"), ("flip", "glow")]
    # An event the chart ignores is recorded under its own name.
    records.clear()
    activities = parked()
    boom = RuntimeError("boom")
    with anyio.fail_after(BOUND):
        async with Actor(LIFECYCLE, activities, inspect=records.append) as actor:  # type: ignore[arg-type]
            record = await actor.send("stop")
            actor.send_nowait("rejected", error=boom)
            await anyio.wait_all_tasks_blocked()
    assert (record.kind, record.event, record.origin) == ("ignored", "stop", "external")
    (rejected,) = [r for r in records if r.event == "rejected"]
    assert (rejected.kind, rejected.error) == ("ignored", boom)


async def test_an_actor_that_was_not_entered_refuses_events(anyio_backend: str) -> None:
    async def glow(ctx: ActivityContext) -> None:
        await anyio.sleep_forever()

    actor = Actor(LAMP, {"glow": glow})
    with pytest.raises(ActorError, match="not running"):
        actor.send_nowait("flip")
