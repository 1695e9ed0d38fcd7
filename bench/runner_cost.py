"""Measure what one runner process costs: idle CPU and RSS, and CPU per wake.

Run alone: ``.venv/bin/python bench/runner_cost.py [--backends asyncio,trio]``.
For each backend of the runner, a ``pullwake server`` (SQLite, asyncio) and a child process,
``bench/runner_app.py --backend B``, that imports only
what an application embedding a runner imports, runs one
:class:`~pullwake.runtime.runner.Runner` with default settings on one subscription, and
writes one line to stdout each time its handler starts. The parent reads the child's CPU time
and RSS from ``/proc``:

- **idle**: windows of one heartbeat interval (5 s) with no work; CPU as % of a core, RSS at
  the end of each window;
- **per wake**: the parent appends one message, waits for the child's line, and repeats
  (``--wakes`` per run); the child's CPU over the run, less its idle rate over the same time,
  divided by the number of wakes. It covers reading the wake from SSE, the claim, calling the
  handler and the ``done`` ack.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio
import anyio.abc
import wire
from anyio.streams.buffered import BufferedByteReceiveStream
from figures import Report, arguments, parse
from machine import CpuMeter, rss_bytes
from servers import pullwake_server

HEARTBEAT = 5.0


async def measure(
    url: str, runs: int, wakes: int, idle_seconds: float, backend: str, report: Report
) -> None:
    async with await wire.connect(url) as http:
        for path in ("cost/wake", "cost/jobs"):
            await http.put_json(f"/v1/stream/{path}")
    app = str(Path(__file__).with_name("runner_app.py"))
    command = [sys.executable, app, url, "--backend", backend]
    async with await anyio.open_process(command, stderr=None) as proc:
        try:
            await drive(proc, url, runs, wakes, idle_seconds, backend, report)
        finally:
            if proc.returncode is None:
                proc.kill()


async def drive(
    proc: anyio.abc.Process,
    url: str,
    runs: int,
    wakes: int,
    idle_seconds: float,
    backend: str,
    report: Report,
) -> None:
    """Measure the child ``proc`` (started, about to print ``ready``)."""
    assert proc.stdout is not None
    lines = BufferedByteReceiveStream(proc.stdout)
    with anyio.fail_after(30):
        while await lines.receive_until(b"\n", 1024) != b"ready":
            pass
    await anyio.sleep(1.0)
    meter = CpuMeter(proc.pid)
    idle_cpu, idle_rss = [], []
    for _ in range(runs):
        meter.lap()
        t0 = time.perf_counter()
        await anyio.sleep(idle_seconds)
        used, t1 = meter.lap(), time.perf_counter()
        idle_cpu.append(100 * used / (t1 - t0))
        idle_rss.append(rss_bytes(proc.pid) / 1e6)
    idle_rate = sorted(idle_cpu)[len(idle_cpu) // 2] / 100
    per_wake = []
    async with await wire.connect(url) as http:
        for _ in range(runs):
            meter.lap()
            t0 = time.perf_counter()
            for i in range(wakes):
                await http.post_json("/v1/stream/cost/jobs", {"i": i})
                with anyio.fail_after(10):
                    await lines.receive_until(b"\n", 1024)
            await anyio.sleep(0.05)  # the last ack
            used, t1 = meter.lap(), time.perf_counter()
            per_wake.append(1e6 * (used - idle_rate * (t1 - t0)) / wakes)
    busy_rss = rss_bytes(proc.pid) / 1e6
    key, title = f"runner.{backend}", f"runner on {backend}"
    report.add(f"{key}.idle.cpu", f"idle {title}: CPU", "% of a core", idle_cpu, digits=2)
    report.add(f"{key}.idle.rss", f"idle {title}: RSS", "MB", idle_rss, digits=0)
    report.add(f"{key}.wake.cpu", f"{title}: CPU per wake", "µs", per_wake, digits=0)
    report.note(
        f"{title}: idle windows of {idle_seconds} s against pullwake server on SQLite "
        f"(asyncio); {wakes} wakes per run, one at a time; RSS after the wakes: "
        f"{busy_rss:.0f} MB"
    )


def main() -> int:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--wakes", type=int, default=None, help="wakes per run (default 200)")
    parser.add_argument("--backends", default="asyncio,trio", help="the runner's backends")
    args = parse(parser)
    wakes = args.wakes or (50 if args.quick else 200)
    # A quick run's idle windows are shorter than a heartbeat interval: a noisier figure.
    idle_seconds = 2.0 if args.quick else HEARTBEAT
    report = Report("runner_cost.py", args)
    for backend in args.backends.split(","):
        with pullwake_server() as server:
            anyio.run(measure, server.url, args.runs, wakes, idle_seconds, backend, report)
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
