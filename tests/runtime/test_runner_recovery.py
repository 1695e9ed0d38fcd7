"""The runner recovers what no wake points to, a missing wake stream and poison messages.

Against a real ``pullwake server`` process: work whose wake never reached the runner is
claimed when the wake stream connects (wakes are hints); a wake stream that does not exist is
created, or the runner stops with an error that says how to create it; a handler that always
fails ends in the dead-letter stream after the configured attempts, and the rest flows.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from pullwake.runtime import Claim, Runner
from tests.fixtures.servers import ServerFactory, ServerProcess

from .realserver import Collector, Producer, fast_settings, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

SERVER_ARGS = ["--keepalive", "0.3", "--lease-sweep-interval", "0.1", "--shutdown-grace", "0.5"]


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    return server_factory(args=SERVER_ARGS)


def runner_for(url: str, handler: Any, **kwargs: Any) -> Runner:
    options: dict[str, Any] = {
        "runner_id": "r1",
        "wake_stream": "wake/r1",
        "grace": 1.0,
        "settings": fast_settings(),
    }
    options.update(kwargs)
    return Runner(url, handler=handler, **options)


async def test_work_whose_wake_never_reached_the_runner_is_claimed_when_it_connects(
    server: ServerProcess, anyio_backend: str
) -> None:
    handler = Collector()
    async with Producer(server.url) as producer:
        # The subscription wakes another stream, which nobody reads: no wake ever reaches r1.
        await producer.stream("wake/r1")
        await producer.stream("wake/elsewhere")
        await producer.stream("jobs/a")
        await producer.subscribe("jobs", wake_stream="wake/elsewhere", pattern="jobs/*")
        await producer.append("jobs/a", {"i": 0}, {"i": 1}, {"i": 2})
        with anyio.fail_after(20):
            async with runner_for(server.url, handler, subscriptions=["jobs"]) as runner:
                await handler.wait_for(3)
                await wait_until(lambda: runner.health()["claims_succeeded"] == 1)
                health = runner.health()
    assert handler.messages() == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert health["wakes_received"] == 0
    assert health["claims_failed"] == 0
