"""The runner's promises about its heartbeat, each checked so that breaking it fails a test.

Through the public :class:`Runner` and the fake server, on a ``ManualClock`` that moves only
when every task is blocked (never by real sleeps), so each heartbeat is one deterministic step:

- a heartbeat's ``stream_reset`` *cancels* a connect that hangs: the reset happens within the
  test's bound although the actor would wait a minute for a connect that ignored it, and
  nothing is recorded as leaked;
- two *consecutive* failures reset the stream: fail, succeed, fail does not; fail, fail does.

And, against a real server, a claim token that is well formed but not signed by the server is
refused (401): only the signature check can catch it.
"""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import anyio
import attrs
import pytest

from pullwake.runtime import Runner, RunnerSettings
from pullwake.runtime.actor import TransitionRecord
from pullwake.runtime.backoff import Backoff
from pullwake.runtime.client import Client
from pullwake.runtime.clock import ManualClock
from pullwake.runtime.errors import Rejected
from pullwake.server.store.tokens import TokenClaims, new_secret, sign_token
from tests.fixtures.servers import ServerFactory

from .fakeserver import FakeServer
from .realserver import Producer

pytestmark = pytest.mark.anyio

HEARTBEAT = 100.0
BOUND = 10.0


async def ignore(claim: Any) -> None:
    return None


def make_runner(
    fake: FakeServer, clock: ManualClock, records: list[TransitionRecord], **settings: Any
) -> Runner:
    options: dict[str, Any] = {
        "heartbeat_interval": HEARTBEAT,
        "backoff": Backoff(initial=10 * HEARTBEAT, maximum=10 * HEARTBEAT, jitter=0),
        "stop_bound": 0.5,
    }
    options.update(settings)
    return Runner(
        "http://fake",
        runner_id="r1",
        handler=ignore,
        wake_stream="wake/r1",
        grace=0.5,
        clock=clock,
        settings=RunnerSettings(**options),
        transport=fake.transport(),
        inspect=records.append,
        rng=random.Random(3),
    )


def new_fake() -> FakeServer:
    fake = FakeServer()
    fake.subscribe("s", ["jobs/a"], "wake/r1")
    return fake


async def step(clock: ManualClock) -> None:
    """Let every task block, move the clock to the next deadline, let every task block again."""
    await anyio.wait_all_tasks_blocked()
    deadline = clock.next_deadline()
    assert deadline is not None, "nothing sleeps on the clock"
    clock.advance(max(0.0, deadline - clock.now()))
    await anyio.wait_all_tasks_blocked()


def resets(records: list[TransitionRecord]) -> list[TransitionRecord]:
    return [r for r in records if r.event == "stream_reset" and r.kind == "transition"]


async def test_the_heartbeats_reset_cancels_a_hung_connect_and_leaks_nothing(
    anyio_backend: str,
) -> None:
    fake = new_fake()
    fake.hang("sse")
    clock = ManualClock()
    records: list[TransitionRecord] = []
    # A connect that ignored its cancellation would hold the actor for 30 s: far past the
    # test's bound, so only a real cancel lets the reset through in time.
    runner = make_runner(fake, clock, records, exit_timeout=30.0)
    with anyio.fail_after(BOUND):
        async with runner:
            await clock.wait_sleepers(1)  # the first beat went through; the connect hangs
            await anyio.wait_all_tasks_blocked()
            assert fake.count("sse") == 1
            assert runner.state == "connecting"
            fake.fail("heartbeat", 503, 503)
            await step(clock)
            assert runner.state == "connecting"  # one failure resets nothing
            await step(clock)
            await runner.wait_state("reconnecting")
            assert "connect" not in runner.open_activities()
            assert runner.statistics().actor.leaked == 0
    (reset,) = resets(records)
    assert reset.source[-1] == "connecting"
    assert reset.cancelled == ("connect",)
    assert reset.leaked == ()
    assert reset.origin == "heartbeat"


async def test_fail_succeed_fail_keeps_the_stream_and_fail_fail_resets_it(
    anyio_backend: str,
) -> None:
    fake = new_fake()
    clock = ManualClock()
    records: list[TransitionRecord] = []
    runner = make_runner(fake, clock, records)
    with anyio.fail_after(BOUND):
        async with runner:
            await runner.wait_state("streaming")
            await anyio.wait_all_tasks_blocked()

            def failures() -> int:
                return int(runner.health()["heartbeat_failures"])

            # fail, succeed, fail: never two in a row, so the stream stays.
            for answer, expected in ((503, 1), (None, 1), (503, 2)):
                beats = fake.count("heartbeat")
                if answer is not None:
                    fake.fail("heartbeat", answer)
                await step(clock)
                assert fake.count("heartbeat") == beats + 1
                assert failures() == expected
                assert runner.state == "streaming"
            assert resets(records) == []
            # One success in between, then fail, fail: the second failure resets the stream.
            await step(clock)
            fake.fail("heartbeat", 503, 503)
            await step(clock)
            assert runner.state == "streaming"
            await step(clock)
            await runner.wait_state("reconnecting")
            assert failures() == 4
    (reset,) = resets(records)
    assert reset.source[-1] == "streaming"
    assert reset.origin == "heartbeat"


# -- failure mode 13 with a token that only its signature betrays --------------------------


@pytest.mark.e2e
async def test_a_claim_token_with_a_tampered_signature_is_refused_by_a_real_server(
    server_factory: ServerFactory, anyio_backend: str
) -> None:
    server = server_factory(args=["--admin-token", "adm"])
    with anyio.fail_after(BOUND):
        async with Producer(server.url, "adm") as producer:
            await producer.stream("wake/r1")
            await producer.stream("jobs/a")
            await producer.subscribe("s", wake_stream="wake/r1", streams=["jobs/a"])
            await producer.append("jobs/a", "m1")
        async with Client(server.url, token="adm") as client:
            grant = await client.claim("s", "r1")
            head, payload, signature = grant.token.split(".")
            # Well formed (three parts, a readable payload of the right shape), so only the
            # signature check can refuse them: the same claims signed with another key, and
            # the genuine signature over an edited payload.
            claims = [grant.subscription_id, grant.generation, grant.wake_id, "r1"]
            edited = json.dumps([*claims[:1], grant.generation + 1, *claims[2:]])
            encoded = base64.urlsafe_b64encode(edited.encode()).rstrip(b"=").decode()
            tampered = [
                sign_token(new_secret(), TokenClaims("s", grant.generation, grant.wake_id, "r1")),
                f"{head}.{encoded}.{signature}",
            ]
            assert json.loads(base64.urlsafe_b64decode(payload + "==")) == claims
            for token in tampered:
                with pytest.raises(Rejected) as refused:
                    await client.ack(attrs.evolve(grant, token=token), [], done=True)
                assert refused.value.status == 401
                assert "signature does not verify" in str(refused.value)
            # The genuine token still holds the claim: the forgeries changed nothing.
            await client.release(grant)


async def test_a_first_heartbeat_that_fails_once_resets_nothing(anyio_backend: str) -> None:
    fake = new_fake()
    fake.fail("heartbeat", 503)  # the very first beat of the run
    clock = ManualClock()
    records: list[TransitionRecord] = []
    runner = make_runner(fake, clock, records)
    with anyio.fail_after(BOUND):
        async with runner:
            await runner.wait_state("streaming")
            await anyio.wait_all_tasks_blocked()
            health = runner.health()
            assert health["heartbeat_failures"] == 1
            assert resets(records) == []
            # The nudge on streaming beat again, with the lease the settings ask for.
            assert fake.heartbeats
            assert fake.heartbeats[-1]["lease_ms"] == runner.settings.heartbeat_lease_ms()
            assert health["last_heartbeat_ok"] is True
            fake.fail("heartbeat", 503)
            await step(clock)
            assert runner.health()["last_heartbeat_ok"] is False
            assert runner.state == "streaming"
