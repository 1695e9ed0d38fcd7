"""The heartbeat's promises, one :class:`Heartbeat` against a fake host on a ``ManualClock``.

The runner-level tests (``test_promises_runner.py``, ``test_runner.py``) show the heartbeat's
effect on the chart; these pin what they cannot see cheaply, each so that breaking it fails
(found by ``make mutate``, see docs/testing.md):

- the pace: the next beat comes one ``interval`` after the last, a nudge during the pause
  beats at once, a nudge during a beat is spent by that beat;
- a probe pause is in ``[p/2, p]`` and never longer than ``interval``;
- what a beat carries (lease, committed offset, the report, ``status`` only when given), a
  404 registering again, the registry-less ``HEAD`` probe;
- the counting: ``failures_before_reset`` *consecutive* failures send ``stream_reset``,
  every failure is in the diagnostics, a success clears the run of failures;
- the final beat of a stop: retried on a transient failure only, pausing 0.2 s then 0.4 s,
  at most three tries; nothing sent without a registry;
- one exchange at a time, and a beat bounded by ``timeout`` with a message saying so.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, cast

import anyio
import pytest

from pullwake.runtime.actor import ActivityContext, Outcome
from pullwake.runtime.client import Client
from pullwake.runtime.clock import ManualClock
from pullwake.runtime.diagnostics import Diagnostics
from pullwake.runtime.errors import NotFound, Rejected, RequestFailed, ServerFailure
from pullwake.runtime.heartbeat import FINAL_ATTEMPTS, FINAL_RETRY_PAUSE, Heartbeat

pytestmark = pytest.mark.anyio

BOUND = 5.0
INTERVAL = 10.0


class FakeClient:
    """Answers each heartbeat or probe with the next queued answer (None: success)."""

    def __init__(self) -> None:
        self.answers: list[BaseException | None] = []
        self.calls: list[dict[str, Any]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        #: When set, each exchange waits for it (a server that is slow to answer).
        self.gate: anyio.Event | None = None

    async def _exchange(self, call: dict[str, Any]) -> None:
        self.calls.append(call)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            answer = self.answers.pop(0) if self.answers else None
            if answer is not None:
                raise answer
        finally:
            self.in_flight -= 1

    async def heartbeat(self, runner_id: str, **fields: Any) -> None:
        await self._exchange({"kind": "heartbeat", "runner_id": runner_id, **fields})

    async def probe(self, path: str, **fields: Any) -> None:
        await self._exchange({"kind": "probe", "path": path, **fields})


class FakeHost:
    """A run as the heartbeat sees it."""

    def __init__(self, *, registry: bool | None = True, wake_stream: str | None = "wake/r1"):
        self.runner_id = "r1"
        self.fake = FakeClient()
        self.client = cast(Client, self.fake)
        self.diagnostics = Diagnostics()
        self._registry = registry
        self._wake_stream = wake_stream
        self.registrations = 0
        self.forgotten = 0
        self.saves = 0

    @property
    def registry(self) -> bool | None:
        return self._registry

    @property
    def wake_stream(self) -> str | None:
        return self._wake_stream

    async def ensure_registered(self) -> None:
        self.registrations += 1

    def forget_registration(self) -> None:
        self.forgotten += 1

    async def persist_offset(self) -> str | None:
        self.saves += 1
        return "0007"

    def report(self) -> dict[str, Any]:
        return {"status": "streaming", "wakes": 3}


class FakeContext:
    """What an activity's context does for the heartbeat: collect the events it sends."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, event: str, *, error: BaseException | None = None) -> None:
        self.sent.append(event)


class FixedRandom(random.Random):
    """A random source whose ``random()`` is always ``value``."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def failure(status: int = 503) -> RequestFailed:
    if status == 404:
        return NotFound("404 runner not found", status=404)
    if status in (401, 403):
        return Rejected(f"{status} refused", status=status)
    if status >= 500:
        return ServerFailure(f"{status} server failure", status=status)
    return RequestFailed(f"{status} refused", status=status)


def make(
    host: FakeHost,
    clock: ManualClock,
    *,
    failures_before_reset: int = 2,
    probe_interval: float | None = None,
    rng: random.Random | None = None,
    timeout: float = 2.0,
    interval: float = INTERVAL,
) -> Heartbeat:
    return Heartbeat(
        host,
        clock=clock,
        interval=interval,
        timeout=timeout,
        lease_ms=30_000,
        failures_before_reset=failures_before_reset,
        probe_interval=probe_interval,
        rng=rng or random.Random(1),
    )


def as_context(ctx: FakeContext) -> ActivityContext:
    return cast(ActivityContext, ctx)


async def into(results: list[Any], fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
    """Run ``fn(*args)`` and keep what it returned (a task's result)."""
    results.append(await fn(*args))


async def test_a_beat_carries_the_lease_the_committed_offset_and_the_report(
    anyio_backend: str,
) -> None:
    host = FakeHost()
    heartbeat = make(host, ManualClock())
    with anyio.fail_after(BOUND):
        await heartbeat.beat()
        await heartbeat.beat(status="stopped")
    first, final = host.fake.calls
    assert first == {
        "kind": "heartbeat",
        "runner_id": "r1",
        "lease_ms": 30_000,
        "wake_stream_offset": "0007",
        "diagnostics": {"status": "streaming", "wakes": 3},
        "timeout": 2.0,
    }
    assert final["diagnostics"] == {"status": "stopped", "wakes": 3}
    assert host.registrations == 2
    assert host.saves == 2


async def test_a_server_that_forgot_the_runner_gets_it_registered_again_and_the_same_beat(
    anyio_backend: str,
) -> None:
    host = FakeHost()
    host.fake.answers = [failure(404)]
    heartbeat = make(host, ManualClock())
    with anyio.fail_after(BOUND):
        await heartbeat.beat()
    first, again = host.fake.calls
    assert first == again
    assert host.forgotten == 1
    assert host.registrations == 2  # once before the beat, once after the 404


async def test_without_a_registry_the_beat_is_a_probe_of_the_wake_stream(
    anyio_backend: str,
) -> None:
    host = FakeHost(registry=False)
    heartbeat = make(host, ManualClock())
    with anyio.fail_after(BOUND):
        await heartbeat.beat()
    assert host.fake.calls == [{"kind": "probe", "path": "wake/r1", "timeout": 2.0}]
    assert host.saves == 1  # the offset goes to the local store all the same
    nothing = FakeHost(registry=False, wake_stream=None)
    with anyio.fail_after(BOUND):
        await make(nothing, ManualClock()).beat()
    assert nothing.fake.calls == []


async def test_two_consecutive_failures_reset_the_stream_and_a_success_clears_them(
    anyio_backend: str,
) -> None:
    host = FakeHost()
    clock = ManualClock()
    ctx = FakeContext()
    heartbeat = make(host, clock)
    diagnostics = host.diagnostics
    host.fake.answers = [failure(), None, failure(), failure(), failure()]
    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(heartbeat.run, as_context(ctx))
            seen = []
            for _ in range(5):
                await clock.wait_sleepers(1)
                await anyio.wait_all_tasks_blocked()
                seen.append(
                    (
                        heartbeat.consecutive_failures,
                        diagnostics.heartbeat_failures,
                        diagnostics.last_heartbeat_ok,
                        list(ctx.sent),
                    )
                )
                # The next beat is one interval after this one.
                assert clock.next_deadline() == clock.now() + INTERVAL
                clock.advance(INTERVAL)
            tg.cancel_scope.cancel()
    assert seen == [
        (1, 1, False, []),
        (0, 1, True, []),
        (1, 2, False, []),
        (2, 3, False, ["stream_reset"]),
        (3, 4, False, ["stream_reset", "stream_reset"]),
    ]
    assert diagnostics.last_error == "heartbeat: 503 server failure"
    assert diagnostics.last_heartbeat_at is not None


async def test_a_short_interval_is_waited_in_full(anyio_backend: str) -> None:
    host = FakeHost()
    clock = ManualClock()
    heartbeat = make(host, clock, interval=0.5)
    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(heartbeat.run, as_context(FakeContext()))
            for beats in (1, 2, 3):
                await clock.wait_sleepers(1)
                await anyio.wait_all_tasks_blocked()
                assert len(host.fake.calls) == beats
                assert clock.next_deadline() == clock.now() + 0.5
                clock.advance(0.5)
            tg.cancel_scope.cancel()


async def test_failures_before_reset_is_the_number_of_failures_in_a_row(
    anyio_backend: str,
) -> None:
    host = FakeHost()
    clock = ManualClock()
    ctx = FakeContext()
    heartbeat = make(host, clock, failures_before_reset=3)
    host.fake.answers = [failure(), failure(), failure()]
    resets = []
    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(heartbeat.run, as_context(ctx))
            for _ in range(3):
                await clock.wait_sleepers(1)
                await anyio.wait_all_tasks_blocked()
                resets.append(len(ctx.sent))
                clock.advance(INTERVAL)
            tg.cancel_scope.cancel()
    assert resets == [0, 0, 1]


async def test_a_refusal_ends_the_loop_and_the_probe_with_rejected(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pullwake.heartbeat")
    for activity in ("run", "probe"):
        caplog.clear()
        host = FakeHost()
        clock = ManualClock()
        heartbeat = make(host, clock, probe_interval=1.0)
        refusal = failure(401)
        host.fake.answers = [refusal]
        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                outcomes: list[Outcome | None] = []
                ctx = FakeContext()
                tg.start_soon(into, outcomes, getattr(heartbeat, activity), as_context(ctx))
                await anyio.wait_all_tasks_blocked()
                clock.advance(1.0)  # the probe's first pause
        assert outcomes == [Outcome("rejected", refusal)], activity
        assert ctx.sent == []
        assert host.diagnostics.last_error == "heartbeat: 401 refused"
        # A refusal is news, in the loop and in the probe alike.
        assert [r.levelno for r in caplog.records] == [logging.WARNING], activity
        assert host.diagnostics.heartbeat_failures == 1
        assert host.diagnostics.last_heartbeat_ok is False


async def test_a_nudge_beats_now_and_a_nudge_during_a_beat_is_spent_by_it(
    anyio_backend: str,
) -> None:
    host = FakeHost()
    clock = ManualClock()
    heartbeat = make(host, clock)
    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(heartbeat.run, as_context(FakeContext()))
            await clock.wait_sleepers(1)
            assert len(host.fake.calls) == 1
            clock.advance(3.0)
            heartbeat.nudge()  # in the pause: beat at once
            await anyio.wait_all_tasks_blocked()
            assert len(host.fake.calls) == 2
            # And the pause after it is a whole interval from then.
            assert clock.next_deadline() == clock.now() + INTERVAL
            # A nudge while a beat is under way is spent by that beat.
            host.fake.gate = gate = anyio.Event()
            clock.advance(INTERVAL)
            await anyio.wait_all_tasks_blocked()
            assert host.fake.in_flight == 1
            heartbeat.nudge()
            gate.set()
            host.fake.gate = None
            await anyio.wait_all_tasks_blocked()
            assert len(host.fake.calls) == 3
            assert clock.next_deadline() == clock.now() + INTERVAL
            tg.cancel_scope.cancel()


async def test_a_probe_pause_is_between_half_and_all_of_the_probe_interval(
    anyio_backend: str,
) -> None:
    cases = [
        (FixedRandom(0.0), 4.0, 4.0),  # no jitter drawn: the whole interval
        (FixedRandom(1.0), 4.0, 2.0),  # all of it: half
        (FixedRandom(0.5), 4.0, 3.0),
        (FixedRandom(0.0), 40.0, INTERVAL),  # never longer than the heartbeat's interval
        (FixedRandom(0.5), None, INTERVAL),  # no probe interval: the heartbeat's
    ]
    for rng, probe_interval, expected in cases:
        host = FakeHost()
        clock = ManualClock()
        heartbeat = make(host, clock, probe_interval=probe_interval, rng=rng)
        host.fake.answers = [failure(), None]
        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                ended: list[Outcome | None] = []
                tg.start_soon(into, ended, heartbeat.probe, as_context(FakeContext()))
                pauses = []
                for _ in range(2):
                    await clock.wait_sleepers(1)
                    deadline = clock.next_deadline()
                    assert deadline is not None
                    pauses.append(deadline - clock.now())
                    assert len(host.fake.calls) == len(pauses) - 1
                    clock.advance(deadline - clock.now())
        # It probed after each pause, and the first exchange that got through ended it.
        assert pauses == [expected, expected], (probe_interval, rng.value)
        assert ended == [None]
        assert len(host.fake.calls) == 2
        assert heartbeat.consecutive_failures == 0
        assert host.diagnostics.last_heartbeat_ok is True


async def test_a_probe_logs_its_first_failures_and_then_only_at_debug_level(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    host = FakeHost()
    clock = ManualClock()
    heartbeat = make(host, clock, probe_interval=1.0, rng=FixedRandom(0.0))
    host.fake.answers = [failure(), failure(), failure(), failure()]
    caplog.set_level(logging.DEBUG, logger="pullwake.heartbeat")
    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(heartbeat.probe, as_context(FakeContext()))
            for _ in range(5):
                await clock.wait_sleepers(1)
                clock.advance(1.0)
                await anyio.wait_all_tasks_blocked()
    levels = [r.levelno for r in caplog.records if r.name == "pullwake.heartbeat"]
    # The first two failures are news; past failures_before_reset they go to debug.
    assert levels == [logging.WARNING, logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert host.diagnostics.heartbeat_failures == 4


async def test_the_final_beat_tries_a_transient_failure_again_pausing_longer_each_time(
    anyio_backend: str,
) -> None:
    for answers, sent in (([failure(), failure()], True), ([failure()] * 3, False)):
        host = FakeHost()
        clock = ManualClock()
        heartbeat = make(host, clock)
        host.fake.answers = list(answers)
        results: list[bool] = []
        pauses: list[float] = []
        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                tg.start_soon(into, results, heartbeat.final)
                while True:
                    await anyio.wait_all_tasks_blocked()
                    deadline = clock.next_deadline()
                    if deadline is None:
                        break
                    pauses.append(round(deadline - clock.now(), 6))
                    clock.advance(deadline - clock.now())
        assert results == [sent]
        tries = len(answers) + 1 if sent else FINAL_ATTEMPTS
        assert len(host.fake.calls) == tries
        assert {c["diagnostics"]["status"] for c in host.fake.calls} == {"stopped"}
        # 0.2 s after the first failure, 0.4 s after the second, no pause after the last try.
        assert pauses == [FINAL_RETRY_PAUSE * n for n in range(1, min(tries, FINAL_ATTEMPTS))]


async def test_the_final_beat_gives_up_at_once_on_a_refusal_and_sends_nothing_unregistered(
    anyio_backend: str,
) -> None:
    for answer in (failure(400), failure(401)):
        host = FakeHost()
        heartbeat = make(host, ManualClock())
        host.fake.answers = [answer]
        with anyio.fail_after(BOUND):
            assert await heartbeat.final() is False
        assert len(host.fake.calls) == 1
    for registry in (False, None):
        host = FakeHost(registry=registry)
        with anyio.fail_after(BOUND):
            assert await make(host, ManualClock()).final() is False
        assert host.fake.calls == []
        assert host.registrations == 0
    host = FakeHost()
    with anyio.fail_after(BOUND):
        assert await make(host, ManualClock()).final() is True


async def test_one_exchange_at_a_time_and_each_bounded_by_the_timeout(
    anyio_backend: str,
) -> None:
    host = FakeHost()
    heartbeat = make(host, ManualClock(), timeout=0.05)
    host.fake.gate = anyio.Event()  # never set: the server does not answer
    with anyio.fail_after(BOUND):
        failures: list[BaseException] = []

        async def beat() -> None:
            try:
                await heartbeat.beat()
            except TimeoutError as exc:
                failures.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(beat)
            tg.start_soon(beat)
    # The second beat waited for the first, then ran out of time in the wait or its own turn.
    assert host.fake.most_in_flight == 1
    assert len(failures) == 2
    assert [str(f) for f in failures] == ["no answer within 0.05 s"] * 2
    # A loop beat that times out counts as a failure like any other.
    clock = ManualClock()
    looping = make(host, clock, timeout=0.05)
    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(looping.run, as_context(FakeContext()))
            await clock.wait_sleepers(1)
            tg.cancel_scope.cancel()
    assert looping.consecutive_failures == 1
    assert host.diagnostics.last_error == "heartbeat: TimeoutError: no answer within 0.05 s"


async def test_a_nudge_before_the_first_pause_is_spent_by_the_first_beat(
    anyio_backend: str,
) -> None:
    """The read activity may nudge before the loop ever paused (a connect faster than the
    first beat): nothing breaks, and the first beat answers it."""
    host = FakeHost()
    clock = ManualClock()
    heartbeat = make(host, clock)
    heartbeat.nudge()
    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(heartbeat.run, as_context(FakeContext()))
            await clock.wait_sleepers(1)
            await anyio.wait_all_tasks_blocked()
            assert len(host.fake.calls) == 1
            assert clock.next_deadline() == clock.now() + INTERVAL
            tg.cancel_scope.cancel()
    assert host.diagnostics.last_heartbeat_ok is True
    assert host.diagnostics.last_heartbeat_at is not None


async def test_the_heartbeats_log_lines_say_what_failed_and_name_the_runner(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """JSON logs carry ``runner_id`` on every line about a runner (docs/runner.md, Logs)."""
    caplog.set_level(logging.DEBUG, logger="pullwake.heartbeat")
    host = FakeHost()
    clock = ManualClock()
    heartbeat = make(host, clock)
    # The loop: a 404 (registered again, then a 503), then a refusal.
    host.fake.answers = [failure(404), failure(503), failure(401)]
    with anyio.fail_after(BOUND):
        outcomes: list[Outcome | None] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(into, outcomes, heartbeat.run, as_context(FakeContext()))
            await clock.wait_sleepers(1)
            clock.advance(INTERVAL)
        assert host.diagnostics.last_error == "heartbeat: 401 refused"
        host.fake.answers = [failure(400)]
        assert await heartbeat.final() is False
    lines = [(r.levelno, r.getMessage(), getattr(r, "runner_id", None)) for r in caplog.records]
    assert lines == [
        (logging.WARNING, "server forgot runner 'r1'; registering again", "r1"),
        (logging.WARNING, "heartbeat failed (1 in a row): 503 server failure", "r1"),
        (logging.WARNING, "heartbeat failed (2 in a row): 401 refused", "r1"),
        (logging.WARNING, "final heartbeat failed: 400 refused", "r1"),
    ]


async def test_a_probe_failure_is_recorded_with_its_cause(anyio_backend: str) -> None:
    host = FakeHost()
    clock = ManualClock()
    heartbeat = make(host, clock, probe_interval=1.0, rng=FixedRandom(0.0))
    host.fake.answers = [failure(502)]
    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(heartbeat.probe, as_context(FakeContext()))
            await clock.wait_sleepers(1)
            clock.advance(1.0)
            await clock.wait_sleepers(1)
            assert host.diagnostics.last_error == "heartbeat: 502 server failure"
            tg.cancel_scope.cancel()


async def test_a_final_beat_that_stays_transient_logs_the_last_failure(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pullwake.heartbeat")
    host = FakeHost()
    clock = ManualClock()
    heartbeat = make(host, clock)
    host.fake.answers = [failure(503), failure(502), failure(504)]
    results: list[bool] = []
    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(into, results, heartbeat.final)
            while results == []:
                await anyio.wait_all_tasks_blocked()
                deadline = clock.next_deadline()
                if deadline is not None:
                    clock.advance(deadline - clock.now())
    assert results == [False]
    assert [r.getMessage() for r in caplog.records] == [
        "final heartbeat failed: 504 server failure"
    ]
