"""Measure wake throughput: complete cycles per second, 1 and 8 subscriptions, three servers.

Run alone: ``.venv/bin/python bench/throughput.py [--servers ...] [--seconds S]``.
A cycle is append → wake → claim → handler → ack ``done``. Each subscription (lane) has its
own stream and a closed-loop producer: append one message, wait until the handler has been
called for it, append the next (the ack of the previous claim may still be in flight; the
server then issues the next wake when that ack arrives, as it would for any busy worker).
One pullwake runner with default settings (``concurrency=8``) serves all lanes. The figure is
claims acked ``done`` per second over a fixed window after a warm-up, from a fresh runner
and fresh subscriptions per run; the server runs in its own process, the runner and the
producers (raw HTTP client) share this one. Beside it: the CPU of both processes, the server's
CPU per cycle, and the server's ceiling, the cycles per second one server process would reach
with a whole core to itself (1 s divided by its CPU per cycle), which does not depend on how
busy the machine is.
"""

from __future__ import annotations

import os
import sys
import time

import anyio
import wire
from figures import Report, arguments
from machine import CpuMeter
from servers import NAMES, TITLES, target
from workload import Workload, workload

WARMUP = 0.5
LANES = (1, 8)


async def produce(work: Workload, lane: int, stop: anyio.Event) -> None:
    """Append to one lane in a closed loop until ``stop`` is set."""
    async with await wire.connect(work.url) as http:
        i = 0
        while not stop.is_set():
            work.probe.arm(lane)
            answer = await http.post_json(work.paths[lane], {"i": i})
            if answer.status not in (200, 204):
                raise RuntimeError(f"append failed: {answer}")
            await work.probe.wait(lane)
            i += 1


async def one_run(
    url: str, pid: int, tag: str, lanes: int, seconds: float
) -> tuple[float, float, float, float]:
    """Return cycles/s, server CPU, runner-process CPU (% of a core) and server µs/cycle."""
    me = os.getpid()
    async with workload(url, tag, lanes) as work, anyio.create_task_group() as tg:
        stop = anyio.Event()
        for lane in range(lanes):
            tg.start_soon(produce, work, lane, stop)
        await anyio.sleep(WARMUP)
        server, own = CpuMeter(pid), CpuMeter(me)
        before, t0 = work.claims_succeeded(), time.perf_counter()
        await anyio.sleep(seconds)
        after, t1 = work.claims_succeeded(), time.perf_counter()
        server_used, own_used = server.lap(), own.lap()
        stop.set()
    elapsed = t1 - t0
    cycles = max(1, after - before)
    return (
        (after - before) / elapsed,
        100 * server_used / elapsed,
        100 * own_used / elapsed,
        1e6 * server_used / cycles,
    )


def main() -> int:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--servers", default=",".join(NAMES), help="comma-separated servers")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured window per run")
    args = parser.parse_args()
    report = Report("throughput.py", args)
    for name in args.servers.split(","):
        with target(name) as server:
            for lanes in LANES:
                runs = [
                    anyio.run(
                        one_run, server.url, server.pid, f"tp{lanes}x{run}", lanes, args.seconds
                    )
                    for run in range(args.runs)
                ]
                report.add(
                    f"throughput.{name}.{lanes}",
                    f"{TITLES[name]}: {lanes} subscription(s), cycles/s",
                    "cycles/s",
                    [r[0] for r in runs],
                    digits=0,
                )
                report.add(
                    f"throughput.{name}.{lanes}.server_cpu",
                    f"{TITLES[name]}: {lanes} subscription(s), server CPU",
                    "% of a core",
                    [r[1] for r in runs],
                    digits=0,
                )
                report.add(
                    f"throughput.{name}.{lanes}.server_cycle",
                    f"{TITLES[name]}: {lanes} subscription(s), server CPU per cycle",
                    "µs",
                    [r[3] for r in runs],
                    digits=0,
                )
                report.add(
                    f"throughput.{name}.{lanes}.ceiling",
                    f"{TITLES[name]}: {lanes} subscription(s), server ceiling (1 core)",
                    "cycles/s",
                    [1e6 / r[3] for r in runs],
                    digits=0,
                )
                report.add(
                    f"throughput.{name}.{lanes}.runner_cpu",
                    f"{TITLES[name]}: {lanes} subscription(s), runner + producer CPU",
                    "% of a core",
                    [r[2] for r in runs],
                    digits=0,
                )
    report.note(
        f"each run: a fresh runner (default settings, concurrency 8, asyncio) and fresh "
        f"subscriptions; {WARMUP} s warm-up, then claims acked done over {args.seconds} s"
    )
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
