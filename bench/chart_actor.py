"""Measure the cost per event of the lifecycle chart alone and of the actor that runs it.

Run alone: ``.venv/bin/python bench/chart_actor.py``. It cycles the chart through
start → connected → stream_ended → backoff_elapsed → ... and reports the time per event (the
median of five runs with the spread). The actor figure includes the mailbox, the chart step,
cancelling and waiting for the exited state's activity, and starting the entered state's
activity.
"""

from __future__ import annotations

import sys
import time

import anyio
from figures import Report, arguments, parse

from pullwake.machines import LIFECYCLE, StepRecorder
from pullwake.runtime.actor import ActivityContext, Actor

CYCLE = ("connected", "stream_ended", "backoff_elapsed")


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


def main() -> int:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000, help="events per run")
    args = parse(parser)
    report = Report("chart_actor.py", args)
    n = args.events if not args.quick else min(args.events, 500)
    chart = [chart_events_per_second(n) for _ in range(args.runs)]
    report.add(
        "chart.event",
        "chart (python-statemachine) alone: per event",
        "µs",
        [1e6 / r for r in chart],
    )
    for backend in ("asyncio", "trio"):
        figures = [anyio.run(actor_events_per_second, n, backend=backend) for _ in range(args.runs)]
        report.add(
            f"actor.{backend}.event",
            f"actor on {backend}: per event",
            "µs",
            [1e6 / r for r in figures],
        )
    report.note(f"each run: {n} lifecycle events (connected, stream_ended, backoff_elapsed, ...)")
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
