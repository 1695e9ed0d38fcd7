"""The runner is a pull-wake worker for the Durable Streams reference server (npm).

The reference server has pull-wake subscriptions but no runner registry, so the runner probes
liveness with ``HEAD`` on its wake stream and keeps its offset in a local file. The server is
shared by the session, so every name here is unique to the test run.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from pullwake.runtime import Runner, SubscriptionSpec
from pullwake.runtime.offsets import FileOffsetStore
from tests.fixtures.servers import ReferenceServer

from .realserver import Collector, Producer, Transitions, fast_settings, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.interop]


async def test_wakes_from_the_reference_server_are_handled_end_to_end(
    reference_server: ReferenceServer, anyio_backend: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    wake_stream = f"wake-{tag}/r1"
    streams = [f"jobs-{tag}/a", f"jobs-{tag}/b"]
    store = FileOffsetStore(tmp_path / "r1.offset")
    handler = Collector()
    transitions = Transitions()
    async with Producer(reference_server.url) as producer:
        await producer.stream(wake_stream)
        for path in streams:
            await producer.stream(path)

        def make_runner(handler: Collector) -> Runner:
            return Runner(
                reference_server.url,
                runner_id=f"r1-{tag}",
                handler=handler,
                wake_stream=wake_stream,
                subscriptions=[SubscriptionSpec(f"sub-{tag}", pattern=f"jobs-{tag}/*")],
                offset_store=store,
                settings=fast_settings(),
                inspect=transitions.append,
            )

        async with make_runner(handler) as runner:
            await runner.wait_state("streaming")
            for i in range(3):
                for path in streams:
                    await producer.append(path, {"path": path, "i": i})
            await handler.wait_for(6)
            await wait_until(lambda: runner.health()["claims_succeeded"] >= 1)
            await wait_until(lambda: runner.health()["handlers_active"] == 0)
            health = runner.health()
        saved = await store.load()
        # A second process resumes from the local file and handles only new work.
        second = Collector()
        async with make_runner(second) as runner:
            await runner.wait_state("streaming")
            await producer.append(streams[0], {"path": streams[0], "i": "new"})
            await second.wait_for(1)
            await wait_until(lambda: runner.health()["claims_succeeded"] >= 1)
            second_wakes = runner.health()["wakes_received"]
        response = await producer.http.get(f"/v1/stream/{wake_stream}", params={"offset": saved})
        assert response.status_code == 200, response.text
        wakes_after_saved = [m for m in response.json() if m.get("type") == "wake"]
    handled = sorted((m["path"], m["i"]) for m in handler.messages())
    assert handled == sorted((path, i) for path in streams for i in range(3))
    assert health["registry"] is False
    assert health["claims_failed"] == 0
    assert saved is not None
    assert second.messages() == [{"path": streams[0], "i": "new"}]
    # It read only the wakes after the saved offset; a replay from the start would also read
    # the first run's wakes (it handled its six messages on wakes: there were some).
    assert health["wakes_received"] >= 1
    assert 1 <= second_wakes <= len(wakes_after_saved)


async def test_messages_appended_while_no_runner_ran_are_handled_by_a_starting_runner(
    reference_server: ReferenceServer, anyio_backend: str, tmp_path: Path
) -> None:
    # The reference server wakes a subscription once per pending period; a wake sent while no
    # runner listened (or never sent) must not strand the work: the runner claims on connect.
    tag = uuid.uuid4().hex[:8]
    wake_stream = f"wake-{tag}/r1"
    stream = f"jobs-{tag}/a"
    sub_id = f"sub-{tag}"
    handler = Collector()
    async with Producer(reference_server.url) as producer:
        await producer.stream(wake_stream)
        await producer.stream(stream)
        await producer.subscribe(sub_id, wake_stream=wake_stream, pattern=f"jobs-{tag}/*")
        await producer.append(stream, {"i": 0}, {"i": 1}, {"i": 2})
        runner = Runner(
            reference_server.url,
            runner_id=f"r2-{tag}",
            handler=handler,
            wake_stream=wake_stream,
            subscriptions=[sub_id],
            offset_store=FileOffsetStore(tmp_path / "r2.offset"),
            # Read the wake stream from its tail: the wakes written before the start are
            # exactly the ones a restarted runner has already read (or never got).
            settings=fast_settings(initial_offset="now"),
        )
        async with runner:
            await handler.wait_for(3)
            await wait_until(lambda: runner.health()["claims_succeeded"] >= 1)
            health = runner.health()
    assert handler.messages() == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert health["wakes_received"] == 0
    assert health["claims_failed"] == 0
