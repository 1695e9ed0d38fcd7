"""``Runner.end_grace()`` cuts a stop's grace: handlers are cancelled and their claims released."""

from __future__ import annotations

import anyio
import pytest

from pullwake.runtime import Claim, Runner
from tests.fixtures.servers import ServerFactory, ServerProcess

from .realserver import Producer, fast_settings, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    return server_factory(args=["--keepalive", "0.3"])


@pytest.mark.parametrize("when", ["during the stop", "before the stop"])
async def test_end_grace_cancels_the_handler_and_releases_its_claim(
    server: ServerProcess, anyio_backend: str, when: str
) -> None:
    started = anyio.Event()
    cancelled = anyio.Event()

    async def slow(claim: Claim) -> None:
        started.set()
        try:
            await anyio.sleep(3600)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    async with Producer(server.url) as producer:
        await producer.stream("jobs/a")
        await producer.subscribe("jobs", wake_stream="wake/r1", pattern="jobs/*")
        runner = Runner(
            server.url,
            runner_id="r1",
            handler=slow,
            wake_stream="wake/r1",
            grace=3600.0,
            settings=fast_settings(),
        )
        with anyio.fail_after(20):
            async with runner:
                await runner.wait_state("streaming")
                await producer.append("jobs/a", {"n": 1})
                await started.wait()
                assert (await producer.subscription("jobs"))["holder"] == "r1"
                if when == "before the stop":
                    runner.end_grace()
                    await runner.stop()
                else:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(runner.stop)
                        await wait_until(lambda: runner.state == "stopping")
                        # The grace holds: the handler still runs while the stop waits.
                        await anyio.sleep(0.3)
                        assert not cancelled.is_set()
                        runner.end_grace()
                assert cancelled.is_set()
                assert runner.state == "stopped"
        sub = await producer.subscription("jobs")
    assert sub["holder"] is None
    assert runner.statistics().claims.released_on_stop == 1
