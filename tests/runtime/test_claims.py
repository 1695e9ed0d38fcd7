"""The claim pipeline: one claim per subscription, queued wakes, retries, leases, a bounded stop.

The server is the in-memory fake (``fakeserver.py``) behind ``httpx.MockTransport`` and delays
run on a ``ManualClock``, so every retry, backoff and lease extension here happens exactly when
the test moves the clock, and "it did not retry" is observable rather than timed.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import httpx
import pytest
from anyio import wait_all_tasks_blocked

from pullwake.runtime.backoff import Backoff
from pullwake.runtime.claims import ClaimPipeline, ClaimSettings
from pullwake.runtime.client import Client
from pullwake.runtime.clock import ManualClock
from pullwake.runtime.errors import Rejected, ServerFailure
from pullwake.runtime.offsets import Ticket
from pullwake.runtime.work import Claim, Wake

from .fakeserver import FakeServer
from .waiting import wait_until

pytestmark = pytest.mark.anyio

Handler = Callable[[Claim], Awaitable[None]]


@asynccontextmanager
async def running_pipeline(
    fake: FakeServer,
    handler: Handler,
    *,
    clock: ManualClock | None = None,
    concurrency: int = 8,
    rejected: list[Rejected] | None = None,
) -> AsyncIterator[ClaimPipeline]:
    client = Client("http://fake", transport=fake.transport())
    settings = ClaimSettings(
        concurrency=concurrency,
        retry=Backoff(initial=1.0, maximum=8.0),
        failure_backoff=Backoff(initial=10.0, maximum=40.0),
    )
    pipeline = ClaimPipeline(
        client,
        handler,
        worker="r1",
        settings=settings,
        clock=clock or ManualClock(),
        on_rejected=(rejected.append if rejected is not None else None),
        rng=random.Random(1),
    )
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await tg.start(pipeline.run)
                try:
                    yield pipeline
                finally:
                    with anyio.CancelScope(shield=True):
                        await pipeline.close(grace=0, bound=1)
    finally:
        await client.aclose()


class Gated:
    """A handler that records each claim and waits for the test to let it finish."""

    def __init__(self) -> None:
        self.claims: list[Claim] = []
        self.messages: list[object] = []
        self.running = 0
        self.most_running = 0
        self.gates: list[anyio.Event] = []
        self.started = anyio.Event()

    async def __call__(self, claim: Claim) -> None:
        self.claims.append(claim)
        gate = anyio.Event()
        self.gates.append(gate)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self.started.set()
        try:
            await gate.wait()
            for stream in claim.pending_streams:
                async for message in claim.messages(stream.path):
                    self.messages.append(message)
        finally:
            self.running -= 1

    async def wait_claims(self, count: int) -> None:
        await wait_until(lambda: len(self.claims) >= count)


async def settle_down() -> None:
    await wait_all_tasks_blocked()


# -- failure mode 4: a second wake for a busy subscription -----------------------------------


async def test_a_second_wake_for_a_busy_subscription_is_queued_and_honoured(
    anyio_backend: str,
) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r")
    fake.append("a", "m1")
    handler = Gated()
    async with running_pipeline(fake, handler) as pipeline:
        first, second, third = Ticket(), Ticket(), Ticket()
        pipeline.submit(Wake("s"), first)
        await handler.wait_claims(1)
        fake.append("a", "m2")
        pipeline.submit(Wake("s"), second)
        fake.append("a", "m3")
        pipeline.submit(Wake("s"), third)
        await settle_down()
        # One claim in flight for the subscription; the later wakes wait (no polling, no
        # second claim, and neither overwrote the other).
        assert fake.count("claim") == 1
        assert (first.settled, second.settled, third.settled) == (True, False, False)
        assert pipeline.lanes() == {"s": 2}
        handler.gates[0].set()
        await handler.wait_claims(2)
        handler.gates[1].set()
        await pipeline.wait_idle()
    # The first claim saw m1, the second saw m2 and m3; the third found nothing left (a skip).
    assert handler.messages == ["m1", "m2", "m3"]
    assert fake.count("claim") == 3
    assert (second.settled, third.settled) == (True, True)
    stats = pipeline.stats
    assert (stats.claims_succeeded, stats.claims_skipped, stats.claims_failed) == (2, 1, 0)
    assert fake.subscriptions["s"].acked == {"a": fake.tail("a")}


async def test_subscriptions_run_concurrently_up_to_the_limit(anyio_backend: str) -> None:
    fake = FakeServer()
    for name in ("s1", "s2", "s3"):
        fake.subscribe(name, [f"{name}/a"], "wake/r")
        fake.append(f"{name}/a", name)
    handler = Gated()
    async with running_pipeline(fake, handler, concurrency=2) as pipeline:
        for name in ("s1", "s2", "s3"):
            pipeline.submit(Wake(name))
        await handler.wait_claims(2)
        await settle_down()
        assert (handler.running, fake.count("claim")) == (2, 2)
        handler.gates[0].set()
        await handler.wait_claims(3)
        for gate in handler.gates:
            gate.set()
        await pipeline.wait_idle()
    assert handler.most_running == 2
    assert sorted(handler.messages) == ["s1", "s2", "s3"]
    assert pipeline.stats.claims_succeeded == 3


async def test_already_claimed_and_no_pending_work_are_skips(anyio_backend: str) -> None:
    fake = FakeServer()
    fake.subscribe("idle", ["a"], "wake/r")
    busy = fake.subscribe("busy", ["b"], "wake/r")
    fake.append("b", 1)
    busy.holder = "someone-else"
    handler = Gated()
    async with running_pipeline(fake, handler) as pipeline:
        tickets = [Ticket(), Ticket()]
        pipeline.submit(Wake("idle"), tickets[0])
        pipeline.submit(Wake("busy"), tickets[1])
        await pipeline.wait_idle()
    assert handler.claims == []
    assert all(t.settled for t in tickets)
    assert (pipeline.stats.claims_skipped, pipeline.stats.claims_failed) == (2, 0)
    assert pipeline.stats.last_claim_result is not None
    assert pipeline.stats.last_claim_result.startswith("skipped")


# -- failure mode 5: transient claim failures are retried -----------------------------------


async def test_transient_claim_failures_are_retried_with_backoff(anyio_backend: str) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r")
    fake.append("a", "m1")
    fake.fail("claim", 503, httpx.ConnectError("refused"), 502)
    clock = ManualClock()
    handler = Gated()
    async with running_pipeline(fake, handler, clock=clock) as pipeline:
        ticket = Ticket()
        pipeline.submit(Wake("s"), ticket)
        delays = []
        for attempt in range(1, 4):
            await clock.wait_sleepers(1)
            await settle_down()
            # It waits on the clock: no retry happens until the delay has passed.
            assert fake.count("claim") == attempt
            assert not ticket.settled
            deadline = clock.next_deadline()
            assert deadline is not None
            delays.append(deadline - clock.now())
            clock.advance(deadline - clock.now())
        await handler.wait_claims(1)
        handler.gates[0].set()
        await pipeline.wait_idle()
    assert fake.count("claim") == 4
    assert ticket.settled
    assert handler.messages == ["m1"]
    assert pipeline.stats.claim_retries == 3
    assert pipeline.stats.claims_succeeded == 1
    # Exponential: each ceiling doubles (jittered within [ceiling/2, ceiling]).
    assert delays == sorted(delays)
    assert 0.5 <= delays[0] <= 1.0
    assert 2.0 <= delays[2] <= 4.0


async def test_a_refused_claim_token_stops_the_runner_via_on_rejected(anyio_backend: str) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r")
    fake.append("a", 1)
    fake.fail("claim", 401)
    rejected: list[Rejected] = []
    handler = Gated()
    async with running_pipeline(fake, handler, rejected=rejected) as pipeline:
        pipeline.submit(Wake("s"))
        await pipeline.wait_idle()
    assert len(rejected) == 1
    assert rejected[0].status == 401
    assert fake.count("claim") == 1
    assert handler.claims == []


# -- leases ---------------------------------------------------------------------------------


async def test_the_lease_is_extended_every_third_of_its_ttl(anyio_backend: str) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r", lease_ttl_ms=3000)
    fake.append("a", 1)
    clock = ManualClock()
    handler = Gated()
    async with running_pipeline(fake, handler, clock=clock) as pipeline:
        pipeline.submit(Wake("s"))
        await handler.wait_claims(1)
        for extensions in (1, 2):
            await clock.wait_sleepers(1)
            assert clock.next_deadline() == pytest.approx(clock.now() + 1.0)
            clock.advance(1.0)
            await wait_until(lambda n=extensions: fake.count("ack") >= n)
        handler.gates[0].set()
        await pipeline.wait_idle()
    bodies = fake.bodies("ack")
    assert [b.get("done", False) for b in bodies] == [False, False, True]
    assert bodies[0]["acks"] == []
    assert pipeline.stats.claims_succeeded == 1


async def test_a_lost_lease_cancels_the_handler_and_is_counted(anyio_backend: str) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r", lease_ttl_ms=3000)
    fake.append("a", 1)
    clock = ManualClock()
    cancelled = anyio.Event()

    async def handler(claim: Claim) -> None:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    async with running_pipeline(fake, handler, clock=clock) as pipeline:
        pipeline.submit(Wake("s"))
        await clock.wait_sleepers(1)
        await wait_until(lambda: pipeline.stats.handlers_active == 1)
        # The server expired the lease (and woke the subscription again for someone else).
        fake.expire("s")
        clock.advance(1.0)
        with anyio.fail_after(5):
            await cancelled.wait()
        await pipeline.wait_idle()
    assert pipeline.stats.leases_lost == 1
    assert pipeline.stats.claims_failed == 1
    assert pipeline.stats.claims_succeeded == 0
    # A fenced claim is neither acked done nor released: it is no longer ours.
    assert fake.count("release") == 0
    assert [b.get("done", False) for b in fake.bodies("ack")] == [False]


async def test_a_fenced_partial_ack_raises_lease_lost_in_the_handler(anyio_backend: str) -> None:
    from pullwake.runtime.errors import LeaseLost

    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r")
    fake.append("a", 1)
    seen: list[BaseException] = []

    async def handler(claim: Claim) -> None:
        fake.expire("s")
        try:
            await claim.ack("a", fake.tail("a"))
        except LeaseLost as exc:
            seen.append(exc)
            raise

    async with running_pipeline(fake, handler) as pipeline:
        pipeline.submit(Wake("s"))
        await pipeline.wait_idle()
    assert len(seen) == 1
    assert "lost" in str(seen[0])
    assert pipeline.stats.leases_lost == 1


# -- handler outcomes -------------------------------------------------------------------------


async def test_success_acks_done_at_the_tail_or_past_it_when_a_read_overshot(
    anyio_backend: str,
) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["a", "b"], "wake/r")
    fake.append("a", "a1", "a2", "a3")
    fake.append("b", "b1")
    snapshot_tail_b = fake.tail("b")
    seen: list[object] = []

    async def handler(claim: Claim) -> None:
        # Messages appended after the claim's snapshot; the fake reads two per batch, so
        # stream "a" is read to its snapshot tail and stream "b" is left unread.
        fake.append("b", "b2")
        async for message in claim.messages("a"):
            seen.append(message)

    async with running_pipeline(fake, handler) as pipeline:
        pipeline.submit(Wake("s"))
        await pipeline.wait_idle()
    assert seen == ["a1", "a2", "a3"]
    done = fake.bodies("ack")[-1]
    assert done["done"] is True
    # "b" is acked at the snapshot's tail: b2 stays pending for the next wake.
    assert {a["stream"]: a["offset"] for a in done["acks"]} == {
        "a": fake.tail("a"),
        "b": snapshot_tail_b,
    }
    assert fake.subscriptions["s"].acked["b"] < fake.tail("b")


async def test_partial_acks_commit_progress_and_batches_carry_their_offset(
    anyio_backend: str,
) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r")
    fake.append("a", 1, 2, 3)
    batches = []

    async def handler(claim: Claim) -> None:
        async for batch in claim.batches("a"):
            batches.append(batch.messages)
            await claim.ack("a", batch.offset)
            assert claim.acked("a") == batch.offset

    async with running_pipeline(fake, handler) as pipeline:
        pipeline.submit(Wake("s"))
        await pipeline.wait_idle()
    assert batches == [(1, 2), (3,)]
    acks = fake.bodies("ack")
    assert [a.get("done", False) for a in acks] == [False, False, True]
    # Everything was acked already, so the final ack only ends the claim.
    assert acks[-1]["acks"] == []


async def test_a_failing_handler_releases_and_its_subscription_backs_off(
    anyio_backend: str,
) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r")
    fake.append("a", "poison")
    clock = ManualClock()
    calls = 0

    async def handler(claim: Claim) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("cannot handle this message")

    async with running_pipeline(fake, handler, clock=clock) as pipeline:
        pipeline.submit(Wake("s"))
        await pipeline.wait_idle()
        assert (calls, fake.count("release")) == (1, 1)
        # The server re-woke the subscription; the next claim waits for the failure backoff
        # instead of spinning on the poison message.
        pipeline.submit(Wake("s"))
        await clock.wait_sleepers(1)
        await settle_down()
        assert fake.count("claim") == 1
        first_pause = (clock.next_deadline() or 0) - clock.now()
        clock.advance(first_pause)
        await pipeline.wait_idle()
        assert (calls, fake.count("release")) == (2, 2)
        pipeline.submit(Wake("s"))
        await clock.wait_sleepers(1)
        second_pause = (clock.next_deadline() or 0) - clock.now()
        clock.advance(second_pause)
        await pipeline.wait_idle()
    assert 5.0 <= first_pause <= 10.0
    assert 10.0 <= second_pause <= 20.0
    assert pipeline.stats.handler_failures == 3
    assert pipeline.stats.claims_failed == 3


async def test_a_failed_read_raises_in_the_handler_never_an_empty_view(
    anyio_backend: str,
) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r")
    fake.append("a", 1)
    fake.fail("read", 503)
    outcome: list[object] = []

    async def handler(claim: Claim) -> None:
        try:
            outcome.extend([m async for m in claim.messages("a")])
        except ServerFailure as exc:
            outcome.append(exc)
            raise

    async with running_pipeline(fake, handler) as pipeline:
        pipeline.submit(Wake("s"))
        await pipeline.wait_idle()
    assert len(outcome) == 1
    assert isinstance(outcome[0], ServerFailure)
    assert fake.count("release") == 1
    assert fake.subscriptions["s"].acked["a"] < fake.tail("a")


# -- failure modes 7 and 8: claims at stop, bounded stop ---------------------------------------


async def test_a_claim_granted_while_stopping_is_released_not_dispatched(
    anyio_backend: str,
) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r")
    fake.append("a", 1)
    gate = fake.gate("claim")
    handler = Gated()
    async with running_pipeline(fake, handler) as pipeline:
        ticket = Ticket()
        pipeline.submit(Wake("s"), ticket)
        await wait_until(lambda: fake.count("claim") == 1)
        async with anyio.create_task_group() as tg:
            stuck: list[tuple[str, ...]] = []

            async def close() -> None:
                stuck.append(await pipeline.close(grace=5, bound=1))

            tg.start_soon(close)
            await wait_until(lambda: not pipeline.accepting)
            gate.set()
    assert stuck == [()]
    assert handler.claims == []
    assert fake.count("release") == 1
    assert fake.subscriptions["s"].holder is None
    assert pipeline.stats.released_on_stop == 1


async def test_stop_lets_handlers_finish_within_grace(anyio_backend: str) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r")
    fake.append("a", 1)

    async def handler(claim: Claim) -> None:
        await anyio.sleep(0.05)

    async with running_pipeline(fake, handler) as pipeline:
        pipeline.submit(Wake("s"))
        await wait_until(lambda: pipeline.stats.handlers_active == 1)
        assert await pipeline.close(grace=5, bound=1) == ()
    assert pipeline.stats.claims_succeeded == 1
    assert fake.count("release") == 0


async def test_stop_cancels_handlers_after_grace_and_releases_their_claims(
    anyio_backend: str,
) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r")
    fake.append("a", 1)
    cancelled = anyio.Event()

    async def handler(claim: Claim) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    async with running_pipeline(fake, handler) as pipeline:
        queued = Ticket()
        pipeline.submit(Wake("s"))
        pipeline.submit(Wake("s"), queued)
        await wait_until(lambda: pipeline.stats.handlers_active == 1)
        assert await pipeline.close(grace=0.01, bound=1) == ()
    assert cancelled.is_set()
    assert fake.count("release") == 1
    assert fake.subscriptions["s"].holder is None
    assert pipeline.stats.released_on_stop == 1
    # The queued wake was never accepted: the wake-stream offset stays before it.
    assert not queued.settled


async def test_stop_is_bounded_and_names_a_handler_that_ignores_cancellation(
    anyio_backend: str,
) -> None:
    fake = FakeServer()
    fake.subscribe("stubborn", ["a"], "wake/r")
    fake.append("a", 1)
    let_go = anyio.Event()

    async def handler(claim: Claim) -> None:
        with anyio.CancelScope(shield=True):
            await let_go.wait()

    async with running_pipeline(fake, handler) as pipeline:
        pipeline.submit(Wake("stubborn"))
        await wait_until(lambda: pipeline.stats.handlers_active == 1)
        with anyio.fail_after(3):
            stuck = await pipeline.close(grace=0.01, bound=0.05)
        assert len(stuck) == 1
        assert "'stubborn'" in stuck[0]
        # Its claim was released anyway, so the work goes to another claim.
        assert fake.count("release") == 1
        assert fake.subscriptions["stubborn"].holder is None
        let_go.set()
    # The straggler ended; its own late finishing did not release or ack twice.
    assert fake.count("release") == 1
    assert pipeline.stats.claims_succeeded == 0


async def test_submit_is_refused_once_closing(anyio_backend: str) -> None:
    fake = FakeServer()
    async with running_pipeline(fake, Gated()) as pipeline:
        await pipeline.close(grace=0, bound=0.1)
        assert pipeline.submit(Wake("s")) is False
    assert fake.calls == []


def test_wakes_parse_only_wake_events() -> None:
    assert Wake.parse({"type": "wake", "subscription_id": "s", "generation": 2, "ts": 5}) == Wake(
        "s", None, 2, 5
    )
    assert Wake.parse({"type": "other", "subscription_id": "s"}) is None
    assert Wake.parse({"type": "wake"}) is None
    assert Wake.parse(["not", "a", "dict"]) is None


async def test_a_release_that_fails_transiently_is_retried_within_the_lease(
    anyio_backend: str,
) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r", lease_ttl_ms=30_000)
    fake.append("a", 1)
    fake.fail("release", 503, httpx.ConnectError("restarting"))
    clock = ManualClock()

    async def handler(claim: Claim) -> None:
        raise ValueError("fails")

    async with running_pipeline(fake, handler, clock=clock) as pipeline:
        pipeline.submit(Wake("s"))
        for attempt in (1, 2):
            await wait_until(lambda n=attempt: fake.count("release") == n)
            await clock.wait_sleepers(1)
            await anyio.wait_all_tasks_blocked()
            # Only the retry sleeps now: no further release until the clock moves.
            assert fake.count("release") == attempt
            clock.advance((clock.next_deadline() or 0) - clock.now())
        await pipeline.wait_idle()
    assert fake.count("release") == 3
    assert pipeline.stats.releases == 1
    assert fake.subscriptions["s"].holder is None


async def test_a_done_ack_is_retried_until_the_lease_ends_not_given_back_early(
    anyio_backend: str,
) -> None:
    # Found by the fault matrix (server SIGTERM, 5 s outage, 10 s lease): the done ack gave
    # up as soon as its next backoff step no longer fitted in the lease, then the release,
    # retried from a small step, reached the restarted server: finished work given back and
    # done twice. The ack must keep trying until the lease ends.
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r", lease_ttl_ms=10_000)
    fake.append("a", 1)
    fake.fail("ack", *[httpx.ConnectError("restarting")] * 4)
    clock = ManualClock()
    handler = Gated()
    async with running_pipeline(fake, handler, clock=clock) as pipeline:
        pipeline.submit(Wake("s"))
        await handler.wait_claims(1)
        finished_at = clock.now()
        handler.gates[0].set()
        for failures in range(1, 5):
            await wait_until(lambda n=failures: fake.count("ack") == n)
            await clock.wait_sleepers(1)
            await anyio.wait_all_tasks_blocked()
            deadline = clock.next_deadline()
            assert deadline is not None
            # Never a wait past the lease's end, nor longer than a ninth of the lease, so an
            # attempt comes soon after the server is back.
            assert deadline <= finished_at + 10.0
            assert deadline - clock.now() <= 10.0 / 9 + 1e-9
            clock.advance(deadline - clock.now())
        await pipeline.wait_idle()
    assert fake.count("ack") == 5
    assert fake.bodies("ack")[-1]["done"] is True
    assert fake.count("release") == 0
    assert fake.subscriptions["s"].holder is None
    assert pipeline.stats.claims_succeeded == 1
    assert handler.messages == [1]


async def test_a_done_ack_that_fails_past_the_lease_gives_the_claim_back(
    anyio_backend: str,
) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r", lease_ttl_ms=10_000)
    fake.append("a", 1)
    fake.fail("ack", *[503] * 50)
    clock = ManualClock()
    handler = Gated()
    async with running_pipeline(fake, handler, clock=clock) as pipeline:
        pipeline.submit(Wake("s"))
        await handler.wait_claims(1)
        finished_at = clock.now()
        handler.gates[0].set()
        for _ in range(20):
            await anyio.wait_all_tasks_blocked()
            if fake.count("release"):
                break
            await clock.wait_sleepers(1)
            deadline = clock.next_deadline()
            assert deadline is not None
            assert deadline <= finished_at + 10.0
            clock.advance(deadline - clock.now())
        await pipeline.wait_idle()
    # Bounded: about one attempt per ninth of the lease, the last at its end, then the
    # release.
    assert 8 <= fake.count("ack") <= 14
    assert clock.now() == pytest.approx(finished_at + 10.0)
    assert fake.count("release") == 1
    assert pipeline.stats.claims_failed == 1


async def test_a_failed_lease_extension_is_retried_soon_not_a_whole_interval_later(
    anyio_backend: str,
) -> None:
    # Found by tests/e2e/test_long_handlers.py: with a retry only at the next tick, an outage
    # of a little over a third of the lease made two extensions fail in a row, the lease ran
    # out under a handler that was still working, and its work was done twice.
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r", lease_ttl_ms=30_000)
    fake.append("a", 1)
    fake.fail("ack", httpx.ConnectError("down"), httpx.ConnectError("down"))
    clock = ManualClock()
    handler = Gated()
    async with running_pipeline(fake, handler, clock=clock) as pipeline:
        pipeline.submit(Wake("s"))
        await handler.wait_claims(1)
        waits = []
        for attempt in range(1, 5):
            await clock.wait_sleepers(1)
            await anyio.wait_all_tasks_blocked()
            deadline = clock.next_deadline()
            assert deadline is not None
            waits.append(deadline - clock.now())
            clock.advance(deadline - clock.now())
            await wait_until(lambda n=attempt: fake.count("ack") == n)
        handler.gates[0].set()
        await pipeline.wait_idle()
    # A third of the lease; after each failure the claim backoff (1 s, then 2 s at most);
    # after a success, a third of the lease again.
    assert waits[0] == pytest.approx(10.0)
    assert 0.5 <= waits[1] <= 1.0
    assert 1.0 <= waits[2] <= 2.0
    assert waits[3] == pytest.approx(10.0)
    assert [b.get("done", False) for b in fake.bodies("ack")] == [False] * 4 + [True]
    assert pipeline.stats.leases_lost == 0
    assert pipeline.stats.claims_succeeded == 1


async def test_lease_extension_retries_come_at_least_three_times_per_interval(
    anyio_backend: str,
) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r", lease_ttl_ms=3000)
    fake.append("a", 1)
    fake.fail("ack", *[httpx.ConnectError("down")] * 3)
    clock = ManualClock()
    handler = Gated()
    async with running_pipeline(fake, handler, clock=clock) as pipeline:
        pipeline.submit(Wake("s"))
        await handler.wait_claims(1)
        ends = []
        for attempt in range(1, 5):
            await clock.wait_sleepers(1)
            await anyio.wait_all_tasks_blocked()
            deadline = clock.next_deadline()
            assert deadline is not None
            ends.append(deadline)
            clock.advance(deadline - clock.now())
            await wait_until(lambda n=attempt: fake.count("ack") == n)
        handler.gates[0].set()
        await pipeline.wait_idle()
    # The tick at 1 s fails; the backoff (1 s, 2 s, ...) is cut to a third of the interval,
    # so the retries all come well before the lease (3 s) would end.
    assert ends == pytest.approx([1.0, 1 + 1 / 3, 1 + 2 / 3, 2.0])
    assert pipeline.stats.leases_lost == 0
