"""Events per second through the lifecycle chart alone and through the actor.

Run alone: ``.venv/bin/python bench/chart_actor.py``. It cycles the chart through
start → connected → stream_ended → backoff_elapsed → ... and reports the median of five runs
with the spread. The actor figure includes the mailbox, the chart step, cancelling and waiting
for the exited state's activity, and starting the entered state's activity.
"""

from __future__ import annotations

import statistics
import sys
import time

import anyio

from pullwake.machines import LIFECYCLE, StepRecorder
from pullwake.runtime.actor import ActivityContext, Actor

CYCLE = ("connected", "stream_ended", "backoff_elapsed")
RUNS = 5


def chart_events_per_second(n: int) -> float:
    recorder = StepRecorder()
    machine = LIFECYCLE.new(listeners=[recorder])
    LIFECYCLE.step(machine, recorder, "start")
    t0 = time.perf_counter()
    for i in range(n):
        LIFECYCLE.step(machine, recorder, CYCLE[i % 3])
    return n / (time.perf_counter() - t0)


async def actor_events_per_second(n: int) -> float:
    async def forever(ctx: ActivityContext) -> str | None:
        await anyio.sleep_forever()
        return None

    table = {a.name: forever for owned in LIFECYCLE.activities.values() for a in owned}
    async with Actor(LIFECYCLE, table) as actor:
        await actor.send("start")
        t0 = time.perf_counter()
        for i in range(n):
            await actor.send(CYCLE[i % 3])
        elapsed = time.perf_counter() - t0
        await actor.send("stop")
    return n / elapsed


def summary(label: str, figures: list[float]) -> str:
    med = statistics.median(figures)
    return (
        f"{label:<28} median {med:>9,.0f} events/s  ({1e6 / med:6.1f} µs/event)  "
        f"spread {min(figures):,.0f}..{max(figures):,.0f}"
    )


def main() -> int:
    n = 3000
    print(f"$ .venv/bin/python bench/chart_actor.py   ({RUNS} runs of {n} events each)")
    print(summary("chart (python-statemachine)", [chart_events_per_second(n) for _ in range(RUNS)]))
    for backend in ("asyncio", "trio"):
        figures = [anyio.run(actor_events_per_second, n, backend=backend) for _ in range(RUNS)]
        print(summary(f"actor on {backend}", figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
