"""Give the wake benchmarks their work: streams, subscriptions, a producer and a probe handler.

A **lane** is one subscription over one stream of its own, all lanes waking one wake stream
read by one pullwake :class:`~pullwake.runtime.runner.Runner` (the same runner against every
server). The **probe** is the runner's handler: it notes when it started for each lane and
returns at once (the handler's own work is the application's business, not the wake path's),
after which the runner acks ``done``. The producer appends with the cheap raw client of
:mod:`wire` so it takes as little as possible of the CPU the runner shares with it.

The runner uses its default settings except for the offset store (in memory; the reference
server has no registry, and the figures should not include a local file's fsync). It gets no
``transport=``: a runner given its own httpx transport may take another HTTP path than a
runner built with defaults, and the benchmarks measure the default one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import wire

from pullwake.runtime import Claim, Runner, RunnerSettings, SubscriptionSpec
from pullwake.runtime.offsets import MemoryOffsetStore

__all__ = ["Probe", "Workload", "workload"]

WAIT = 10.0


class Probe:
    """The runner's handler: records, per lane, when its latest call started."""

    def __init__(self, lanes: int) -> None:
        self.calls = 0
        # Invariant: started[i] is the perf_counter() of lane i's latest handler start.
        self.started = [0.0] * lanes
        self._events = [anyio.Event() for _ in range(lanes)]
        self._index: dict[str, int] = {}

    def name(self, sub_id: str, lane: int) -> None:
        """Map the subscription ``sub_id`` to ``lane``."""
        self._index[sub_id] = lane

    def arm(self, lane: int) -> None:
        """Forget the lane's last call; :meth:`wait` then waits for the next one."""
        self._events[lane] = anyio.Event()

    async def wait(self, lane: int) -> float:
        """Wait for the lane's next handler start (armed before); return its time."""
        with anyio.fail_after(WAIT):
            await self._events[lane].wait()
        return self.started[lane]

    async def __call__(self, claim: Claim) -> None:
        now = time.perf_counter()
        lane = self._index[claim.subscription_id]
        self.calls += 1
        self.started[lane] = now
        self._events[lane].set()


class Workload:
    """The lanes of one measurement, the runner that serves them, and the producer."""

    def __init__(self, url: str, tag: str, lanes: int, runner: Runner, probe: Probe) -> None:
        self.url = url
        self.tag = tag
        self.lanes = lanes
        self.runner = runner
        self.probe = probe
        self.paths = [f"/v1/stream/{tag}/jobs/{i}" for i in range(lanes)]

    def claims_succeeded(self) -> int:
        """Return how many claims the runner has acked ``done`` so far."""
        return self.runner.statistics().claims.claims_succeeded

    async def wait_claims(self, count: int) -> None:
        """Wait until ``count`` claims have been acked ``done`` (bounded)."""
        # The runner has no event for "acked"; its counter is polled every 0.5 ms, which
        # happens between samples, not inside a measured interval.
        with anyio.fail_after(WAIT):
            while self.claims_succeeded() < count:  # noqa: ASYNC110
                await anyio.sleep(0.0005)


@asynccontextmanager
async def workload(
    url: str,
    tag: str,
    lanes: int,
    *,
    concurrency: int = 8,
    settings: RunnerSettings | None = None,
) -> AsyncIterator[Workload]:
    """Create ``lanes`` streams and subscriptions under ``tag``; run a streaming runner on them."""
    wake = f"{tag}/wake"
    async with await wire.connect(url) as http:
        for path in (wake, *(f"{tag}/jobs/{i}" for i in range(lanes))):
            answer = await http.put_json(f"/v1/stream/{path}")
            if answer.status not in (200, 201):
                raise RuntimeError(f"PUT {path}: {answer}")
    probe = Probe(lanes)
    specs = []
    for i in range(lanes):
        sub_id = f"{tag.replace('/', '-')}-{i}"
        probe.name(sub_id, i)
        specs.append(SubscriptionSpec(sub_id, streams=(f"{tag}/jobs/{i}",)))
    runner = Runner(
        url,
        runner_id=f"bench-{tag.replace('/', '-')}",
        handler=probe,
        wake_stream=wake,
        subscriptions=specs,
        concurrency=concurrency,
        offset_store=MemoryOffsetStore(),
        settings=settings,
        grace=2.0,
    )
    async with runner:
        with anyio.fail_after(WAIT):
            await runner.wait_state("streaming")
        yield Workload(url, tag, lanes, runner, probe)
