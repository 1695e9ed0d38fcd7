"""The claim pipeline's promises that `make mutate` found unpinned (docs/testing.md).

Each test asserts the whole statistics snapshot after an outcome (the counters operators read,
and ``last_claim_result``), what the handler sees, and what is left held or released; the
pipeline, fake server and manual clock are the ones of ``test_claims.py``.
"""

from __future__ import annotations

import anyio
import attrs
import httpx
import pytest

from pullwake.runtime.claims import ClaimPipeline, ClaimStatistics
from pullwake.runtime.client import Client
from pullwake.runtime.clock import ManualClock
from pullwake.runtime.offsets import Ticket
from pullwake.runtime.work import Claim, Wake

from .fakeserver import FakeServer
from .test_claims import Gated, running_pipeline, settle_down
from .waiting import wait_until

pytestmark = pytest.mark.anyio


def snapshot(stats: ClaimStatistics) -> ClaimStatistics:
    """Return ``stats`` with its wall-clock timestamps blanked (checked apart)."""
    return attrs.evolve(stats, last_claim_at=None, last_dispatch_at=None)


async def test_a_handled_claim_shows_its_wake_and_leaves_no_active_claim(
    anyio_backend: str,
) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r")
    fake.append("a", 1)
    handler = Gated()
    wake = Wake("s")
    async with running_pipeline(fake, handler) as pipeline:
        pipeline.submit(wake)
        await handler.wait_claims(1)
        assert pipeline.active_claims() == (handler.claims[0],)
        assert pipeline.stats.handlers_active == 1
        assert pipeline.stats.last_dispatch_at is not None
        handler.gates[0].set()
        await pipeline.wait_idle()
        assert pipeline.active_claims() == ()
    assert handler.claims[0].wake is wake
    assert pipeline.stats.last_claim_at is not None
    assert snapshot(pipeline.stats) == ClaimStatistics(
        wakes_submitted=1, claims_succeeded=1, last_claim_result="succeeded: done"
    )


async def test_a_success_resets_the_failure_backoff_fail_succeed_fail(anyio_backend: str) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r")
    fake.append("a", 1)
    clock = ManualClock()
    outcomes = [ValueError("first"), None, ValueError("second"), None]

    async def handler(claim: Claim) -> None:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    pauses: list[float] = []
    async with running_pipeline(fake, handler, clock=clock) as pipeline:
        for number in range(4):
            if number:
                fake.append("a", number + 1)
            pipeline.submit(Wake("s"))
            await settle_down()
            deadline = clock.next_deadline()
            pauses.append(0.0 if deadline is None else deadline - clock.now())
            if deadline is not None:
                clock.advance(deadline - clock.now())
            await pipeline.wait_idle()
    # The failure backoff is 10 s with jitter: one pause after each failure, and the one
    # after the second failure is a first step again, because a success came between.
    assert pauses[0] == 0.0
    assert pauses[2] == 0.0
    assert 5.0 <= pauses[1] <= 10.0
    assert 5.0 <= pauses[3] <= 10.0
    assert outcomes == []
    assert snapshot(pipeline.stats) == ClaimStatistics(
        wakes_submitted=4,
        claims_succeeded=2,
        claims_failed=2,
        handler_failures=2,
        releases=2,
        last_claim_result="succeeded: done",
    )


async def test_a_lost_lease_is_counted_once_and_says_so(anyio_backend: str) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r", lease_ttl_ms=3000)
    fake.append("a", 1)
    clock = ManualClock()

    async def handler(claim: Claim) -> None:
        await anyio.sleep_forever()

    async with running_pipeline(fake, handler, clock=clock) as pipeline:
        pipeline.submit(Wake("s"))
        await clock.wait_sleepers(1)
        await wait_until(lambda: pipeline.stats.handlers_active == 1)
        fake.expire("s")
        clock.advance(1.0)
        await pipeline.wait_idle()
        assert pipeline.active_claims() == ()
    assert snapshot(pipeline.stats) == ClaimStatistics(
        wakes_submitted=1, claims_failed=1, leases_lost=1, last_claim_result="failed: lease lost"
    )


async def test_a_lease_lost_at_the_done_ack_is_counted_once_and_not_released(
    anyio_backend: str,
) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r")
    fake.append("a", 1)
    handler = Gated()
    async with running_pipeline(fake, handler) as pipeline:
        pipeline.submit(Wake("s"))
        await handler.wait_claims(1)
        fake.expire("s")
        handler.gates[0].set()
        await pipeline.wait_idle()
    assert fake.count("release") == 0
    assert snapshot(pipeline.stats) == ClaimStatistics(
        wakes_submitted=1,
        claims_failed=1,
        leases_lost=1,
        last_claim_result="failed: lease lost at done",
    )


async def test_every_handler_cancelled_at_stop_is_released_and_counted(
    anyio_backend: str,
) -> None:
    fake = FakeServer()
    for sub in ("s", "t"):
        fake.subscribe(sub, [f"{sub}-a"], "wake/r")
        fake.append(f"{sub}-a", 1)

    async def handler(claim: Claim) -> None:
        await anyio.sleep_forever()

    async with running_pipeline(fake, handler) as pipeline:
        pipeline.submit(Wake("s"))
        pipeline.submit(Wake("t"))
        await wait_until(lambda: pipeline.stats.handlers_active == 2)
        assert await pipeline.close(grace=0.01, bound=1) == ()
    assert fake.count("release") == 2
    assert pipeline.active_claims() == ()
    assert snapshot(pipeline.stats) == ClaimStatistics(
        wakes_submitted=2, releases=2, released_on_stop=2
    )


async def test_a_stop_during_the_done_ack_retries_releases_the_claim(anyio_backend: str) -> None:
    # The handler finished, its done ack failed and waits to be retried; the stop cuts that
    # wait. The claim was never finished, so it is released at once rather than left to
    # expire (which would delay the redelivery by a whole lease).
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r", lease_ttl_ms=10_000)
    fake.append("a", 1)
    fake.fail("ack", *[503] * 10)
    clock = ManualClock()
    handler = Gated()
    async with running_pipeline(fake, handler, clock=clock) as pipeline:
        pipeline.submit(Wake("s"))
        await handler.wait_claims(1)
        handler.gates[0].set()
        await wait_until(lambda: fake.count("ack") == 1)
        await clock.wait_sleepers(1)
        assert await pipeline.close(grace=0, bound=1) == ()
    assert fake.count("release") == 1
    assert fake.subscriptions["s"].holder is None
    assert pipeline.stats.releases == 1


@pytest.mark.parametrize(
    ("answer", "result", "counters"),
    [
        (None, "skipped: NO_PENDING_WORK", {"claims_skipped": 1}),
        (401, "failed: rejected", {"claims_failed": 1}),
        (400, "failed: refused: 400", {"claims_failed": 1}),
    ],
    ids=["no-pending-work", "rejected", "refused"],
)
async def test_a_claim_that_is_not_granted_says_why_in_the_statistics(
    anyio_backend: str, answer: int | None, result: str, counters: dict[str, int]
) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r")
    if answer is not None:
        fake.append("a", 1)
        fake.fail("claim", answer)
    handler = Gated()
    async with running_pipeline(fake, handler, rejected=[]) as pipeline:
        pipeline.submit(Wake("s"))
        await pipeline.wait_idle()
    assert handler.claims == []
    assert snapshot(pipeline.stats) == ClaimStatistics(
        wakes_submitted=1, last_claim_result=result, **counters
    )


async def test_a_claim_retry_shows_what_failed_while_it_waits(anyio_backend: str) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r")
    fake.append("a", 1)
    fake.fail("claim", 503, httpx.ConnectError("refused"))
    clock = ManualClock()
    handler = Gated()
    seen = []
    async with running_pipeline(fake, handler, clock=clock) as pipeline:
        pipeline.submit(Wake("s"))
        for _ in range(2):
            await clock.wait_sleepers(1)
            await settle_down()
            seen.append(snapshot(pipeline.stats))
            clock.advance((clock.next_deadline() or 0) - clock.now())
        await handler.wait_claims(1)
        handler.gates[0].set()
        await pipeline.wait_idle()
    waiting = ClaimStatistics(wakes_submitted=1, wakes_queued=1)
    assert seen == [
        attrs.evolve(waiting, claim_retries=1, last_claim_result="retrying: 503"),
        attrs.evolve(waiting, claim_retries=2, last_claim_result="retrying: network"),
    ]
    assert snapshot(pipeline.stats) == ClaimStatistics(
        wakes_submitted=1, claims_succeeded=1, claim_retries=2, last_claim_result="succeeded: done"
    )


async def test_a_lane_waiting_out_its_failure_backoff_ends_at_once_on_stop(
    anyio_backend: str,
) -> None:
    # close() cancels waiting workers at once; only claims in flight and handlers get the
    # grace period. A worker pausing after a handler failure is waiting, so the stop must
    # not sit out the (here 30 s) grace for it.
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r")
    fake.append("a", 1)
    clock = ManualClock()

    async def handler(claim: Claim) -> None:
        raise ValueError("poison")

    async with running_pipeline(fake, handler, clock=clock) as pipeline:
        pipeline.submit(Wake("s"))
        await pipeline.wait_idle()
        queued = Ticket()
        pipeline.submit(Wake("s"), queued)
        await clock.wait_sleepers(1)
        with anyio.fail_after(5):
            assert await pipeline.close(grace=30, bound=1) == ()
    assert fake.count("claim") == 1
    assert not queued.settled
    assert snapshot(pipeline.stats) == ClaimStatistics(
        wakes_submitted=2,
        claims_failed=1,
        handler_failures=1,
        releases=1,
        last_claim_result="failed: handler raised ValueError",
    )


async def test_a_done_ack_that_fails_until_the_lease_ends_says_so(anyio_backend: str) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r", lease_ttl_ms=3_000)
    fake.append("a", 1)
    fake.fail("ack", *[503] * 50)
    clock = ManualClock()
    handler = Gated()
    async with running_pipeline(fake, handler, clock=clock) as pipeline:
        pipeline.submit(Wake("s"))
        await handler.wait_claims(1)
        handler.gates[0].set()
        for _ in range(20):
            await anyio.wait_all_tasks_blocked()
            if fake.count("release"):
                break
            await clock.wait_sleepers(1)
            clock.advance((clock.next_deadline() or clock.now()) - clock.now())
        await pipeline.wait_idle()
    assert fake.count("release") == 1
    assert snapshot(pipeline.stats) == ClaimStatistics(
        wakes_submitted=1, claims_failed=1, releases=1, last_claim_result="failed: done ack failed"
    )


async def test_a_claim_that_fails_after_the_stop_began_is_not_retried(anyio_backend: str) -> None:
    # close() cancels the waits it finds; a claim request in flight is let finish. When that
    # request then fails transiently, its retry wait starts after close() began: it must be
    # cancelled at its start (no second claim, and the stop does not sit out the 30 s grace).
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r")
    fake.append("a", 1)
    gate = fake.gate("claim")
    fake.fail("claim", 503)
    clock = ManualClock()

    async def handler(claim: Claim) -> None:
        raise AssertionError("no claim is granted")

    ticket = Ticket()
    stuck: list[tuple[str, ...]] = []
    async with running_pipeline(fake, handler, clock=clock) as pipeline:
        pipeline.submit(Wake("s"), ticket)
        await anyio.wait_all_tasks_blocked()
        assert fake.count("claim") == 1  # in flight, held by the server
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def close() -> None:
                    stuck.append(await pipeline.close(grace=30, bound=1))

                tg.start_soon(close)
                await anyio.wait_all_tasks_blocked()
                gate.set()  # the claim answers 503 now that the stop has begun
    assert stuck == [()]
    assert fake.count("claim") == 1
    assert not ticket.settled
    assert pipeline.submit(Wake("s")) is False  # closed: no more wakes taken
    assert snapshot(pipeline.stats) == ClaimStatistics(
        wakes_submitted=1, claim_retries=1, last_claim_result="retrying: 503"
    )


async def test_a_stop_gives_every_busy_subscription_its_grace_not_only_the_first_to_end(
    anyio_backend: str,
) -> None:
    # Two lanes run handlers; the first ends during the grace period. The pipeline is idle only
    # when *both* lanes are: the second handler must get the rest of the grace, not a cancel.
    fake = FakeServer()
    for sub in ("s1", "s2"):
        fake.subscribe(sub, [f"{sub}/a"], "wake/r")
        fake.append(f"{sub}/a", 1)
    handler = Gated()
    stuck: list[tuple[str, ...]] = []
    async with running_pipeline(fake, handler) as pipeline:
        pipeline.submit(Wake("s1"))
        pipeline.submit(Wake("s2"))
        await handler.wait_claims(2)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def close() -> None:
                    stuck.append(await pipeline.close(grace=30, bound=1))

                tg.start_soon(close)
                await anyio.wait_all_tasks_blocked()
                handler.gates[0].set()  # the first handler ends
                await anyio.wait_all_tasks_blocked()
                assert handler.running == 1  # the second still runs: its grace goes on
                handler.gates[1].set()
    assert stuck == [()]
    assert handler.messages == [1, 1]
    assert fake.count("release") == 0
    assert pipeline.stats.claims_succeeded == 2


async def test_a_stop_or_a_look_right_after_a_submit_finds_a_lane_that_has_not_started(
    anyio_backend: str,
) -> None:
    # submit() queues the wake and starts the lane's worker, which has not run yet: the lane
    # holds no claim and waits on nothing, and close() and active_claims() must see it so.
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r")
    fake.append("a", 1)
    handler = Gated()
    ticket = Ticket()
    async with running_pipeline(fake, handler) as pipeline:
        assert pipeline.submit(Wake("s"), ticket) is True
        assert pipeline.active_claims() == ()
        with anyio.fail_after(5):
            assert await pipeline.close(grace=1, bound=1) == ()
    assert handler.claims == []
    assert fake.count("claim") == 0
    assert not ticket.settled


async def test_a_pipeline_cancelled_from_outside_still_releases_its_claims(
    anyio_backend: str,
) -> None:
    # No close(): the task hosting the pipeline is cancelled (its caller was). The running
    # claim is still released, so the work goes back at once instead of when the lease
    # expires. (The release's shield is not what this checks: the in-memory fake answers
    # without a checkpoint, so even an unshielded release would reach it.)
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r")
    fake.append("a", 1)
    handler = Gated()
    pipeline = ClaimPipeline(
        Client("http://fake", transport=fake.transport()),
        handler,
        worker="r1",
        clock=ManualClock(),
    )
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(pipeline.run)
            pipeline.submit(Wake("s"))
            await handler.wait_claims(1)
            tg.cancel_scope.cancel()
    assert fake.count("release") == 1
    assert fake.subscriptions["s"].holder is None


async def test_a_lease_extension_that_fails_after_one_succeeded_is_retried(
    anyio_backend: str,
) -> None:
    # succeed, fail, succeed: the failure count starts afresh after a success, so the failed
    # extension is retried after the claim backoff and the lease holds.
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r", lease_ttl_ms=30_000)
    fake.append("a", 1)
    clock = ManualClock()
    handler = Gated()
    async with running_pipeline(fake, handler, clock=clock) as pipeline:
        pipeline.submit(Wake("s"))
        await handler.wait_claims(1)
        waits = []
        for attempt in range(1, 4):
            await clock.wait_sleepers(1)
            await anyio.wait_all_tasks_blocked()
            deadline = clock.next_deadline()
            assert deadline is not None
            waits.append(deadline - clock.now())
            if attempt == 2:
                fake.fail("ack", httpx.ConnectError("down"))
            clock.advance(deadline - clock.now())
            await wait_until(lambda n=attempt: fake.count("ack") == n)
        handler.gates[0].set()
        await pipeline.wait_idle()
    assert waits[0] == pytest.approx(10.0)
    assert waits[1] == pytest.approx(10.0)
    assert 0.5 <= waits[2] <= 1.0  # the first retry after a failure
    assert pipeline.stats.leases_lost == 0
    assert pipeline.stats.claims_succeeded == 1


async def test_wakes_still_queued_at_a_stop_are_no_longer_counted_as_queued(
    anyio_backend: str,
) -> None:
    # A wake queued behind a busy handler is dropped from the queue by close() (a restart
    # replays it): the queued count goes back to zero, not up.
    fake = FakeServer()
    fake.subscribe("s", ["a"], "wake/r")
    fake.append("a", 1)
    handler = Gated()
    queued = Ticket()
    async with running_pipeline(fake, handler) as pipeline:
        pipeline.submit(Wake("s"))
        await handler.wait_claims(1)
        pipeline.submit(Wake("s"), queued)
        assert pipeline.stats.wakes_queued == 1
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: pipeline.close(grace=30, bound=1))
                await anyio.wait_all_tasks_blocked()
                assert pipeline.stats.wakes_queued == 0
                handler.gates[0].set()
    assert pipeline.stats.wakes_queued == 0
    assert not queued.settled
    assert len(handler.claims) == 1
