"""The runner drives the lifecycle chart through its activities (fake server, manual clock).

These tests pin what the runner does on each kind of server behaviour, with every delay on a
``ManualClock``: a refusal that never backs off, a heartbeat that should abort a hung connect,
or a reconnect that happens too early would show up as a count that is off, not as a flaky
timing. Real-server behaviour (kills, silence, restarts) is in ``test_runner_server.py``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from pullwake.runtime import Claim, Runner, RunnerSettings, SubscriptionSpec
from pullwake.runtime.actor import TransitionRecord
from pullwake.runtime.backoff import Backoff
from pullwake.runtime.clock import ManualClock
from pullwake.runtime.errors import Rejected, RunnerError, RunnerNotRunning
from pullwake.runtime.offsets import FileOffsetStore, MemoryOffsetStore, OffsetStore

from .fakeserver import FakeServer
from .waiting import wait_until

pytestmark = pytest.mark.anyio

HEARTBEAT = 100.0


class Recorder:
    """A handler that records the messages it handled, per subscription."""

    def __init__(self) -> None:
        self.handled: list[tuple[str, object]] = []
        self.claims = 0

    async def __call__(self, claim: Claim) -> None:
        self.claims += 1
        for stream in claim.pending_streams:
            async for message in claim.messages(stream.path):
                self.handled.append((claim.subscription_id, message))

    async def wait_handled(self, count: int) -> None:
        await wait_until(lambda: len(self.handled) >= count, timeout=5)


def make_runner(
    fake: FakeServer,
    handler: Any,
    clock: ManualClock,
    records: list[TransitionRecord] | None = None,
    *,
    offset_store: OffsetStore | None = None,
    **settings: Any,
) -> Runner:
    options: dict[str, Any] = {
        "heartbeat_interval": HEARTBEAT,
        "backoff": Backoff(initial=1.0, maximum=8.0),
        "stop_bound": 0.5,
    }
    options.update(settings)
    return Runner(
        "http://fake",
        runner_id="r1",
        handler=handler,
        wake_stream="wake/r1",
        grace=0.5,
        clock=clock,
        settings=RunnerSettings(**options),
        transport=fake.transport(),
        offset_store=offset_store,
        inspect=(records.append if records is not None else None),
        rng=random.Random(3),
    )


@asynccontextmanager
async def bounded(seconds: float = 10) -> AsyncIterator[None]:
    with anyio.fail_after(seconds):
        yield


def transitions(records: list[TransitionRecord]) -> list[tuple[str, str, str]]:
    return [(r.source[-1], r.event or "", r.target[-1]) for r in records if r.kind == "transition"]


async def wait_for(predicate: Any) -> None:
    await wait_until(predicate, timeout=5)


async def advance_until(clock: ManualClock, predicate: Any, step: float = HEARTBEAT) -> None:
    """Move the clock one heartbeat at a time until ``predicate()`` holds (bounded)."""
    with anyio.fail_after(5):
        for _ in range(1000):
            if predicate():
                return
            await clock.wait_sleepers(1)
            clock.advance(step)
            await anyio.wait_all_tasks_blocked()
    raise TimeoutError("the condition did not hold after 1000 heartbeats")


async def step(clock: ManualClock) -> None:
    """Move the clock to the next sleeper's deadline, then let every task run until it blocks.

    Call it when every task is blocked already (after ``anyio.wait_all_tasks_blocked()`` or the
    last step), so the deadline read is the next thing that can happen.
    """
    deadline = clock.next_deadline()
    assert deadline is not None, "nothing sleeps on the clock"
    clock.advance(max(0.0, deadline - clock.now()))
    await anyio.wait_all_tasks_blocked()


def new_fake(**kwargs: Any) -> FakeServer:
    fake = FakeServer(**kwargs)
    fake.subscribe("s", ["jobs/a"], "wake/r1")
    return fake


# -- the happy path -------------------------------------------------------------------------


async def test_wakes_flow_to_the_handler_and_stop_says_so(anyio_backend: str) -> None:
    fake = new_fake()
    clock = ManualClock()
    handler = Recorder()
    records: list[TransitionRecord] = []
    async with bounded():
        runner = make_runner(fake, handler, clock, records)
        async with runner:
            await runner.wait_state("streaming")
            fake.append("jobs/a", "j1", "j2")
            await handler.wait_handled(2)
            fake.append("jobs/a", "j3")
            await handler.wait_handled(3)
            await wait_for(lambda: runner.offset == fake.tail("wake/r1"))
            await wait_for(lambda: runner.health()["claims_succeeded"] == 2)
            health = runner.health()
            assert health["status"] == "streaming"
            assert health["stream_connected"] is True
            assert health["claims_succeeded"] == 2
            assert health["offset"] == fake.tail("wake/r1")
        assert runner.state == "stopped"
    assert handler.handled == [("s", "j1"), ("s", "j2"), ("s", "j3")]
    assert transitions(records) == [
        ("stopped", "start", "connecting"),
        ("connecting", "connected", "streaming"),
        ("streaming", "stop", "stopping"),
        ("stopping", "drained", "stopped"),
    ]
    # Failure mode 9: the last heartbeat says "stopped" and carries the final offset.
    last = fake.heartbeats[-1]
    assert last["diagnostics"]["status"] == "stopped"
    assert last["wake_stream_offset"] == fake.tail("wake/r1")
    assert fake.sse_open == 0
    assert runner.open_activities() == ()


async def test_a_final_heartbeat_that_meets_a_503_is_tried_again(anyio_backend: str) -> None:
    """A server recovering from a database restart answers 503 for a moment: the stop's last
    heartbeat tries again, so the runner shows offline rather than expired (failure mode 9)."""
    fake = new_fake()
    clock = ManualClock()
    async with bounded(), make_runner(fake, Recorder(), clock) as runner:
        await runner.wait_state("streaming")
        beats = len(fake.heartbeats)
        fake.fail("heartbeat", 503, 503)
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.stop)
            # The retries pause on the manual clock: move it on until the stop is done.
            for _ in range(100):
                await anyio.wait_all_tasks_blocked()
                if runner.state == "stopped":
                    break
                clock.advance(0.5)
        assert runner.state == "stopped"
    assert len(fake.heartbeats) == beats + 1
    assert fake.heartbeats[-1]["diagnostics"]["status"] == "stopped"


async def test_declared_subscriptions_are_created_and_others_ignored(anyio_backend: str) -> None:
    fake = FakeServer()
    fake.subscribe("not-mine", ["other/x"], "wake/r1")
    clock = ManualClock()
    handler = Recorder()
    async with bounded():
        runner = Runner(
            "http://fake",
            runner_id="r1",
            handler=handler,
            wake_stream="wake/r1",
            subscriptions=[SubscriptionSpec("mine", streams=["jobs/b"])],
            clock=clock,
            settings=RunnerSettings(heartbeat_interval=HEARTBEAT),
            transport=fake.transport(),
        )
        async with runner:
            await runner.wait_state("streaming")
            assert fake.bodies("put_subscription") == [
                {"type": "pull-wake", "wake_stream": "wake/r1", "streams": ["jobs/b"]}
            ]
            fake.append("other/x", "theirs")
            fake.append("jobs/b", "ours")
            await handler.wait_handled(1)
            await wait_for(lambda: runner.offset == fake.tail("wake/r1"))
    assert handler.handled == [("mine", "ours")]
    # Only "mine" is claimed: on its wake and once on connect (wakes are hints).
    assert {r.url.path.rsplit("/", 2)[-2] for k, r in fake.calls if k == "claim"} == {"mine"}


# -- failure mode 3: refusals never hot-loop ---------------------------------------------------


async def test_a_persistent_4xx_on_connect_backs_off_exponentially(anyio_backend: str) -> None:
    fake = new_fake()
    fake.fail("sse", *([400] * 6))
    clock = ManualClock()
    records: list[TransitionRecord] = []
    delays = []
    async with bounded():
        runner = make_runner(fake, Recorder(), clock, records)
        async with runner:
            for attempt in range(1, 6):
                # heartbeat + backoff asleep: nothing else can happen until the clock moves
                await clock.wait_sleepers(2)
                await anyio.wait_all_tasks_blocked()
                assert runner.state == "after_answer"
                assert fake.count("sse") == attempt
                deadline = clock.next_deadline()
                assert deadline is not None
                delays.append(deadline - clock.now())
                clock.advance(deadline - clock.now())
            await runner.wait_state("after_answer")
    # Never a zero-delay retry: each wait is within the jitter band of a doubling ceiling,
    # capped at 8 s (1, 2, 4, 8, 8).
    ceilings = [min(8.0, 2.0**n) for n in range(5)]
    assert all(c / 2 <= d <= c for c, d in zip(ceilings, delays, strict=True)), delays
    assert runner.statistics().reconnects >= 5
    assert runner.health()["last_error"] is not None


@pytest.mark.parametrize("status", [404, 503])
async def test_heartbeats_that_get_through_do_not_cut_the_backoff_after_an_http_error(
    anyio_backend: str, status: int
) -> None:
    """A wake stream that answers errors while heartbeats succeed is retried at the backoff's pace.

    The server is up: if every beat that gets through cut the backoff (``server_reachable``),
    the refusals would come back once per beat. So after an answer the beats keep their normal
    interval (no fast probes) and never end the wait early.
    """
    fake = new_fake()
    fake.fail("sse", *([status] * 6))
    clock = ManualClock()
    records: list[TransitionRecord] = []
    attempts: list[float] = []
    beats: list[float] = []
    async with bounded():
        # A heartbeat every second: several get through during each wait of 1 s to 8 s.
        runner = make_runner(fake, Recorder(), clock, records, heartbeat_interval=1.0)
        async with runner:
            await anyio.wait_all_tasks_blocked()
            for _ in range(500):
                attempts += [clock.now()] * (fake.count("sse") - len(attempts))
                beats += [clock.now()] * (fake.count("heartbeat") - len(beats))
                if len(attempts) == 7:
                    break
                await step(clock)
            await runner.wait_state("streaming")
    # Six refusals, then the stream opened; each wait is within the jitter band of a doubling
    # ceiling, capped at 8 s (1, 2, 4, 8, 8, 8), although heartbeats got through meanwhile.
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    ceilings = [min(8.0, 2.0**n) for n in range(6)]
    assert all(c / 2 <= g <= c for c, g in zip(ceilings, gaps, strict=True)), gaps
    while_refused = [t for t in beats if t < attempts[-1]]
    assert len(while_refused) >= 20
    assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(while_refused))
    assert not any(r.event == "server_reachable" for r in records)
    assert transitions(records).count(("after_answer", "backoff_elapsed", "connecting")) == 6


async def test_401_on_connect_stops_with_a_clear_error_and_no_retry(anyio_backend: str) -> None:
    fake = new_fake()
    fake.fail("sse", 401)
    clock = ManualClock()
    records: list[TransitionRecord] = []
    async with bounded():
        runner = make_runner(fake, Recorder(), clock, records)
        # The refusal ends the run for good: the block is cancelled and its exit raises why.
        with pytest.raises(Rejected, match="credentials") as caught:
            async with runner:
                await anyio.sleep_forever()
        assert runner.state == "stopped"
        assert isinstance(runner.error, Rejected)
        assert runner.health()["error"]
    assert caught.value.status == 401
    assert fake.count("sse") == 1
    assert ("connecting", "rejected", "stopping") in transitions(records)


async def test_401_on_heartbeat_stops_the_runner(anyio_backend: str) -> None:
    fake = new_fake()
    fake.fail("heartbeat", 403)
    clock = ManualClock()
    async with bounded():
        runner = make_runner(fake, Recorder(), clock)
        with pytest.raises(Rejected) as caught:
            async with runner:
                await anyio.sleep_forever()
    assert caught.value.status == 403
    assert isinstance(runner.error, Rejected)


async def test_an_unknown_runner_registers_again(anyio_backend: str) -> None:
    fake = new_fake()
    clock = ManualClock()
    async with bounded():
        runner = make_runner(fake, Recorder(), clock)
        async with runner:
            await runner.wait_state("streaming")
            assert fake.count("register") == 1
            # The server lost its registry (a fresh database): the next heartbeat gets 404.
            fake.runners.clear()
            await clock.wait_sleepers(1)
            clock.advance(HEARTBEAT)
            await wait_for(lambda: fake.count("register") == 2 and "r1" in fake.runners)
            await wait_for(lambda: len(fake.heartbeats) >= 2)
            assert runner.state == "streaming"
            assert runner.health()["last_heartbeat_ok"] is True


# -- failure modes 1 and 2: heartbeat failures reset the stream --------------------------------


async def test_heartbeat_failures_abort_a_hung_connect(anyio_backend: str) -> None:
    fake = new_fake()
    fake.hang("sse")
    clock = ManualClock()
    records: list[TransitionRecord] = []
    async with bounded():
        # A backoff far longer than the heartbeat interval: only server_reachable can end it.
        long_backoff = Backoff(initial=10 * HEARTBEAT, maximum=10 * HEARTBEAT, jitter=0)
        runner = make_runner(fake, Recorder(), clock, records, backoff=long_backoff)
        async with runner:
            await wait_for(lambda: fake.count("sse") == 1)
            fake.fail("heartbeat", 503, 503)
            await advance_until(clock, lambda: runner.health()["heartbeat_failures"] == 2)
            await runner.wait_state("server_gone")
            fake.hang("sse", False)
            # The backoff is cut short by the next successful heartbeat (server_reachable).
            await clock.wait_sleepers(2)
            clock.advance(HEARTBEAT)
            await runner.wait_state("streaming")
    reset = [r for r in records if r.event == "stream_reset" and r.kind == "transition"]
    assert len(reset) == 1
    assert reset[0].source[-1] == "connecting"
    assert reset[0].cancelled == ("connect",)
    assert ("server_gone", "server_reachable", "connecting") in transitions(records)


async def test_a_heartbeat_that_times_out_says_how_long_it_waited(anyio_backend: str) -> None:
    fake = new_fake()
    fake.hang("heartbeat")
    async with bounded():
        runner = make_runner(fake, Recorder(), ManualClock(), heartbeat_timeout=0.05)
        async with runner:
            await wait_for(lambda: runner.health()["heartbeat_failures"] >= 1)
            assert runner.health()["last_error"] == (
                "heartbeat: TimeoutError: no answer within 0.05 s"
            )


async def test_heartbeat_failures_reset_an_idle_stream_from_a_dead_server(
    anyio_backend: str,
) -> None:
    fake = new_fake()
    clock = ManualClock()
    records: list[TransitionRecord] = []
    async with bounded():
        runner = make_runner(fake, Recorder(), clock, records)
        async with runner:
            await runner.wait_state("streaming")
            fake.fail("heartbeat", 503)
            await clock.wait_sleepers(1)
            clock.advance(HEARTBEAT)
            await wait_for(lambda: runner.health()["heartbeat_failures"] == 1)
            # One failure is not enough to give up on a stream.
            assert runner.state == "streaming"
            fake.fail("heartbeat", 503)
            await clock.wait_sleepers(1)
            clock.advance(HEARTBEAT)
            await runner.wait_state("server_gone")
    assert ("streaming", "stream_reset", "server_gone") in transitions(records)


# -- reconnects and offsets -------------------------------------------------------------------


async def test_a_clean_eof_reconnects_at_once_from_the_read_offset(anyio_backend: str) -> None:
    fake = new_fake()
    clock = ManualClock()
    handler = Recorder()
    records: list[TransitionRecord] = []
    async with bounded():
        runner = make_runner(fake, handler, clock, records)
        async with runner:
            await runner.wait_state("streaming")
            fake.append("jobs/a", "j1")
            await handler.wait_handled(1)
            read_offset = fake.tail("wake/r1")
            fake.end_sse()
            await runner.wait_state("after_answer")
            await clock.wait_sleepers(2)
            pause = (clock.next_deadline() or 0) - clock.now()
            # The first step after a good stream is the smallest one.
            assert 0.5 <= pause <= 1.0
            clock.advance(pause)
            await runner.wait_state("streaming")
            fake.append("jobs/a", "j2")
            await handler.wait_handled(2)
    sse_offsets = [r.url.params["offset"] for k, r in fake.calls if k == "sse"]
    assert sse_offsets == ["-1", read_offset]
    assert handler.handled == [("s", "j1"), ("s", "j2")]
    assert handler.claims == 2
    assert fake.count("claim") == 2


async def test_a_lost_server_that_returns_is_reconnected_within_a_probe_interval(
    anyio_backend: str,
) -> None:
    """A long backoff does not delay the reconnect to a server that answers again.

    The server goes away like a killed process (reset stream, refused connects) and comes back
    while 40 s of a 50 s backoff remain (a long outage grows the backoff that far). While it
    gave no answer the heartbeat probed every ``reconnect_probe_interval`` (jittered), not
    every ``heartbeat_interval``; the first probe that gets through ends the wait.
    """
    fake = new_fake()
    clock = ManualClock()
    records: list[TransitionRecord] = []
    probe = RunnerSettings().reconnect_probe_interval
    assert probe is not None
    probes: list[float] = []
    async with bounded():
        long_backoff = Backoff(initial=50.0, maximum=50.0, jitter=0)
        runner = make_runner(fake, Recorder(), clock, records, backoff=long_backoff)
        async with runner:
            await runner.wait_state("streaming")
            await anyio.wait_all_tasks_blocked()
            fake.go_down()
            await runner.wait_state("server_gone")
            await anyio.wait_all_tasks_blocked()
            lost_at = clock.now()
            beats = fake.count("heartbeat")
            for _ in range(200):
                if clock.now() >= lost_at + 10:
                    break
                await step(clock)
                probes += [clock.now()] * (fake.count("heartbeat") - beats)
                beats = fake.count("heartbeat")
            assert runner.state == "server_gone"
            fake.come_back()
            back_at = clock.now()
            for _ in range(100):
                if runner.state == "streaming":
                    break
                await step(clock)
            assert runner.state == "streaming"
            reconnected_at = clock.now()
            # Streaming again: one beat at once (the nudge), then the normal interval.
            await anyio.wait_all_tasks_blocked()
            assert clock.sleepers() == 1
            assert (clock.next_deadline() or 0) - clock.now() == pytest.approx(HEARTBEAT)
            assert fake.heartbeats[-1]["diagnostics"]["status"] == "streaming"
    assert reconnected_at - back_at <= probe + 1e-9
    assert reconnected_at < lost_at + 50
    assert ("server_gone", "server_reachable", "connecting") in transitions(records)
    assert ("server_gone", "backoff_elapsed", "connecting") not in transitions(records)
    # The probes while the server was gone: each pause between half a probe interval and a
    # whole one, and not all alike (a fleet does not probe in lockstep).
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert len(gaps) >= 15
    assert all(probe / 2 - 1e-9 <= g <= probe + 1e-9 for g in gaps), gaps
    assert len({round(g, 6) for g in gaps}) > 1


async def test_a_reconnect_is_reported_by_a_heartbeat_at_once(anyio_backend: str) -> None:
    """The server's view follows a reconnect without waiting out the heartbeat interval."""
    fake = new_fake()
    clock = ManualClock()
    async with bounded():
        runner = make_runner(fake, Recorder(), clock)
        async with runner:
            await runner.wait_state("streaming")
            await wait_for(
                lambda: any(b["diagnostics"].get("status") == "streaming" for b in fake.heartbeats)
            )
            fake.end_sse()
            await runner.wait_state("after_answer")
            beats = len(fake.heartbeats)
            await clock.wait_sleepers(2)
            clock.advance((clock.next_deadline() or 0) - clock.now())  # the backoff only
            await runner.wait_state("streaming")
            # No heartbeat interval has passed on the clock, yet a beat reported the stream.
            assert clock.now() < HEARTBEAT
            await wait_for(lambda: len(fake.heartbeats) > beats)
            assert fake.heartbeats[-1]["diagnostics"]["status"] == "streaming"


async def test_a_restarted_runner_resumes_at_its_saved_offset(anyio_backend: str) -> None:
    fake = new_fake()
    handler = Recorder()
    async with bounded():
        async with make_runner(fake, handler, ManualClock()) as runner:
            await runner.wait_state("streaming")
            fake.append("jobs/a", "j1")
            fake.append("jobs/a", "j2")
            await handler.wait_handled(2)
            await wait_for(lambda: runner.offset == fake.tail("wake/r1"))
        claims_before = fake.count("claim")
        saved = fake.runners["r1"]["wake_stream_offset"]
        assert saved == fake.tail("wake/r1")
        # A new process: a new Runner object, same id.
        second = Recorder()
        async with make_runner(fake, second, ManualClock()) as runner:
            await runner.wait_state("streaming")
            await anyio.wait_all_tasks_blocked()
            fake.append("jobs/a", "j3")
            await second.wait_handled(1)
    assert [r.url.params["offset"] for k, r in fake.calls if k == "sse"] == ["-1", saved]
    # No handled wake was replayed: one new claim, for the new message only.
    assert fake.count("claim") == claims_before + 1
    assert second.handled == [("s", "j3")]


async def test_without_a_registry_it_probes_with_head_and_keeps_a_local_offset(
    anyio_backend: str, tmp_path: Path
) -> None:
    fake = new_fake(registry=False)
    clock = ManualClock()
    handler = Recorder()
    store = FileOffsetStore(tmp_path / "r1.offset")
    records: list[TransitionRecord] = []
    async with bounded():
        async with make_runner(fake, handler, clock, records, offset_store=store) as runner:
            await runner.wait_state("streaming")
            fake.append("jobs/a", "j1")
            await handler.wait_handled(1)
            fake.fail("probe", 503, 503)
            await advance_until(clock, lambda: runner.health()["heartbeat_failures"] == 2)
            # server_gone may already be left again (the probe gets through on the manual
            # clock), so wait for its record rather than for the state itself.
            reset = ("streaming", "stream_reset", "server_gone")
            await wait_for(lambda: reset in transitions(records))
            assert runner.health()["registry"] is False
        assert await store.load() == fake.tail("wake/r1")
        async with make_runner(fake, Recorder(), ManualClock(), offset_store=store) as runner:
            await runner.wait_state("streaming")
    assert fake.count("heartbeat") == 0
    assert fake.count("probe") >= 3
    assert ("streaming", "stream_reset", "server_gone") in transitions(records)
    assert [r.url.params["offset"] for k, r in fake.calls if k == "sse"][-1] == fake.tail("wake/r1")


# -- lifetime ---------------------------------------------------------------------------------


async def test_stop_and_start_inside_one_block_reuse_nothing_of_the_last_run(
    anyio_backend: str,
) -> None:
    fake = new_fake()
    handler = Recorder()
    store = MemoryOffsetStore()
    async with bounded(20):
        runner = make_runner(fake, handler, ManualClock(), offset_store=store)
        async with runner:
            clients = []
            for cycle in range(10):
                await runner.wait_state("streaming")
                session = runner._run
                assert session is not None
                clients.append(session.client)
                fake.append("jobs/a", cycle)
                await handler.wait_handled(cycle + 1)
                await runner.stop()
                assert runner.state == "stopped"
                assert session.client.closed
                assert runner.open_activities() == ()
                await runner.start()
        assert fake.sse_open == 0
    assert len({id(client) for client in clients}) == 10
    assert [m for _, m in handler.handled] == list(range(10))
    assert runner.statistics().starts == 11


async def test_a_cancelled_caller_still_gets_a_clean_stop(anyio_backend: str) -> None:
    fake = new_fake()
    records: list[TransitionRecord] = []
    with anyio.move_on_after(10) as outer:
        with anyio.CancelScope() as caller:
            async with make_runner(fake, Recorder(), ManualClock(), records) as runner:
                await runner.wait_state("streaming")
                caller.cancel()
                await anyio.sleep_forever()
    assert not outer.cancelled_caught
    assert caller.cancelled_caught
    # The runner's own tasks were not cut by the caller's cancellation: it drained.
    assert transitions(records)[-2:] == [
        ("streaming", "stop", "stopping"),
        ("stopping", "drained", "stopped"),
    ]
    assert fake.heartbeats[-1]["diagnostics"]["status"] == "stopped"
    assert fake.sse_open == 0


async def test_a_waiter_is_told_when_the_runner_closes_under_it(anyio_backend: str) -> None:
    fake = new_fake()
    fake.hang("sse")
    outcome: list[BaseException] = []
    async with bounded(), anyio.create_task_group() as tg:
        runner = make_runner(fake, Recorder(), ManualClock())
        async with runner:

            async def waiter() -> None:
                try:
                    await runner.wait_state("streaming")
                except RunnerNotRunning as exc:
                    outcome.append(exc)

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
    assert len(outcome) == 1
    assert "closed while waiting" in str(outcome[0])


async def test_a_starlette_lifespan_starts_and_stops_the_runner(anyio_backend: str) -> None:
    from starlette.applications import Starlette

    fake = new_fake()
    handler = Recorder()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with make_runner(fake, handler, ManualClock()) as runner:
            app.state.runner = runner
            yield

    app = Starlette(lifespan=lifespan)
    async with bounded(), app.router.lifespan_context(app):
        runner = app.state.runner
        await runner.wait_state("streaming")
        fake.append("jobs/a", "via lifespan")
        await handler.wait_handled(1)
    assert runner.state == "stopped"
    assert fake.heartbeats[-1]["diagnostics"]["status"] == "stopped"


async def test_using_a_runner_outside_its_block_is_refused(anyio_backend: str) -> None:
    runner = make_runner(new_fake(), Recorder(), ManualClock())
    with pytest.raises(RunnerNotRunning, match="async with"):
        await runner.start()
    with anyio.fail_after(5), pytest.raises(RunnerNotRunning):
        await runner.wait_state("streaming")
    assert runner.state == "stopped"


async def test_no_wake_stream_anywhere_is_a_clear_configuration_error(anyio_backend: str) -> None:
    fake = new_fake()
    async with bounded():
        runner = Runner(
            "http://fake",
            runner_id="r1",
            handler=Recorder(),
            clock=ManualClock(),
            settings=RunnerSettings(heartbeat_interval=HEARTBEAT),
            transport=fake.transport(),
        )
        with pytest.raises(RunnerError, match="wake_stream"):
            async with runner:
                await runner.wait_state("stopped")


async def test_stop_against_a_dead_server_is_still_bounded(anyio_backend: str) -> None:
    fake = new_fake()
    handler = Recorder()
    async with bounded():
        runner = make_runner(fake, handler, ManualClock())
        async with runner:
            await runner.wait_state("streaming")
            fake.hang("heartbeat")
            fake.hang("release")
            with anyio.fail_after(3):
                await runner.stop()
        assert runner.state == "stopped"


def test_runner_arguments_are_checked() -> None:
    async def handler(claim: Claim) -> None:
        return None

    with pytest.raises(ValueError, match="runner_id"):
        Runner("http://x", runner_id="", handler=handler)
    with pytest.raises(ValueError, match="concurrency"):
        Runner("http://x", runner_id="r", handler=handler, concurrency=0)
    with pytest.raises(ValueError, match="URL"):
        Runner([], runner_id="r", handler=handler)
    with pytest.raises(ValueError, match="pattern or streams"):
        SubscriptionSpec("s")
    with pytest.raises(ValueError, match="reconnect_probe_interval"):
        RunnerSettings(reconnect_probe_interval=0)
    assert RunnerSettings(reconnect_probe_interval=None).reconnect_probe_interval is None
