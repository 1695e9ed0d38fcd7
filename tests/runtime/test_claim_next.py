"""The claim pipeline over the claim-next extension: a done-ack that brings the next claim runs
it on the same lane and slot, asks for it only when no other lane waits for a slot, and
releases it when the pipeline is stopping. The server is the in-memory fake speaking
claim-next (``FakeServer.claim_next``)."""

from __future__ import annotations

import anyio
import pytest

from pullwake.runtime.work import Claim, Wake

from .fakeserver import FakeServer
from .test_claims import Gated, running_pipeline
from .waiting import wait_until

pytestmark = pytest.mark.anyio


class ReadFirst(Gated):
    """Read the claimed messages first, then wait for the gate (so work appended meanwhile
    is left for the next claim)."""

    async def __call__(self, claim: Claim) -> None:
        self.claims.append(claim)
        gate = anyio.Event()
        self.gates.append(gate)
        for stream in claim.pending_streams:
            async for message in claim.messages(stream.path):
                self.messages.append(message)
        await gate.wait()


def _done_bodies(fake: FakeServer) -> list[dict[str, object]]:
    return [body for body in fake.bodies("ack") if body.get("done")]


async def test_the_next_claim_from_a_done_ack_runs_without_a_wake_or_claim(
    anyio_backend: str,
) -> None:
    fake = FakeServer()
    fake.claim_next = True
    fake.subscribe("s", ["a"], "wake/r")
    fake.append("a", "m1")
    handler = ReadFirst()
    async with running_pipeline(fake, handler) as pipeline:
        pipeline.submit(Wake("s"))
        await handler.wait_claims(1)
        fake.append("a", "m2")  # while held: no wake
        handler.gates[0].set()
        await handler.wait_claims(2)
        handler.gates[1].set()
        await pipeline.wait_idle()
    assert handler.messages == ["m1", "m2"]
    first, second = handler.claims
    assert second.generation == first.generation + 1
    assert fake.count("claim") == 1
    assert [body.get("claim_next") for body in _done_bodies(fake)] == [{"worker": "r1"}] * 2
    assert pipeline.stats.claims_succeeded == 2
    assert fake.subscriptions["s"].holder is None
    assert fake.subscriptions["s"].acked == {"a": fake.tail("a")}


async def test_no_next_claim_is_asked_while_another_lane_waits_for_a_slot(
    anyio_backend: str,
) -> None:
    fake = FakeServer()
    fake.claim_next = True
    for name in ("s1", "s2"):
        fake.subscribe(name, [f"{name}/a"], "wake/r")
        fake.append(f"{name}/a", name)
    handler = ReadFirst()
    async with running_pipeline(fake, handler, concurrency=1) as pipeline:
        pipeline.submit(Wake("s1"))
        await handler.wait_claims(1)
        pipeline.submit(Wake("s2"))
        fake.append("s1/a", "s1-more")
        handler.gates[0].set()
        await handler.wait_claims(2)
        # The slot went to the waiting subscription, not to s1's next work.
        assert handler.claims[1].subscription_id == "s2"
        assert "claim_next" not in _done_bodies(fake)[0]
        # The plain done-ack woke s1 again (the wake the server appended, delivered here).
        assert fake.subscriptions["s1"].wake_in_flight
        pipeline.submit(Wake("s1"))
        handler.gates[1].set()
        await handler.wait_claims(3)
        handler.gates[2].set()
        await pipeline.wait_idle()
    assert sorted(handler.messages) == ["s1", "s1-more", "s2"]


async def test_a_next_claim_arriving_while_stopping_is_released_not_run(
    anyio_backend: str,
) -> None:
    fake = FakeServer()
    fake.claim_next = True
    fake.subscribe("s", ["a"], "wake/r")
    fake.append("a", "m1")
    handler = ReadFirst()
    async with running_pipeline(fake, handler) as pipeline:
        pipeline.submit(Wake("s"))
        await handler.wait_claims(1)
        fake.append("a", "m2")
        acks = fake.gate("ack")
        handler.gates[0].set()
        await wait_until(lambda: fake.count("ack") == 1)
        async with anyio.create_task_group() as tg:
            stuck: list[tuple[str, ...]] = []

            async def close() -> None:
                stuck.append(await pipeline.close(grace=5, bound=1))

            tg.start_soon(close)
            await wait_until(lambda: not pipeline.accepting)
            acks.set()
    assert stuck == [()]
    assert len(handler.claims) == 1
    assert _done_bodies(fake)[0].get("claim_next") == {"worker": "r1"}
    assert fake.count("release") == 1
    assert fake.subscriptions["s"].holder is None
    assert pipeline.stats.released_on_stop == 1
