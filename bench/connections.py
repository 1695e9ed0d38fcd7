"""Measure connection scale: N idle SSE readers on one pullwake server process.

Run alone: ``.venv/bin/python bench/connections.py [--levels 1000,5000,10000]``.
One ``pullwake server`` (SQLite, default keepalive of 3 s, ``--max-connections`` raised above
the largest level) and, in this process, N readers
speaking the protocol the way an idle runner does: each holds ``GET /v1/stream/<its own wake
stream>?offset=now&live=sse`` open on a raw anyio socket and reads bytes (no SSE parsing).
The readers are opened level by level on the same server (the open-file limit of this
process and so of the server it starts is raised to its hard limit first; each side holds one
descriptor per reader, and the script stops with the limit it found when it is too low).
At each level, after the streams settle:

- **server RSS**, read at the start of each measurement window;
- **server CPU for keepalives**: CPU the server used during windows of one keepalive interval
  with nothing else happening (every reader gets one keepalive per window), as % of a core;
  the same reading with no reader at all is the idle baseline;
- **wake reach**: append to one randomly chosen reader's stream and time until that reader
  receives the ``event: data``, repeated; each trial is one run.

Every reader must have received a keepalive in the last window, or the level is reported as
failed (a reader the server dropped would make the figures meaningless).
"""

from __future__ import annotations

import random
import sys
import time

import anyio
import wire
from figures import Report, arguments, parse
from machine import CpuMeter, rss_bytes
from servers import pullwake_server, raise_fd_limit

KEEPALIVE = 3.0
OPEN_PARALLEL = 64
TRIALS = 25


class Reader:
    """One idle SSE reader: counts keepalive bytes, signals when a data event arrives."""

    __slots__ = ("data", "index", "keepalives", "sse")

    def __init__(self, index: int, sse: wire.SseReader) -> None:
        self.index = index
        self.sse = sse
        self.keepalives = 0
        # Invariant: set when an ``event: data`` arrived since the last re-arm.
        self.data: anyio.Event = anyio.Event()

    async def read(self) -> None:
        """Read until EOF, counting keepalives and setting :attr:`data` on a data event."""
        try:
            while True:
                chunk = await self.sse.receive()
                if b"keepalive" in chunk:
                    self.keepalives += 1
                if b"event: data" in self.sse.received:
                    self.data.set()
                self.sse.forget()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return


async def create_streams(url: str, count: int) -> None:
    """Create the wake streams ``scale/r0`` .. ``scale/r{count-1}`` (8 connections at once)."""

    async def creator(indices: range) -> None:
        async with await wire.connect(url) as http:
            for i in indices:
                answer = await http.put_json(f"/v1/stream/scale/r{i}")
                if answer.status not in (200, 201):
                    raise RuntimeError(f"PUT scale/r{i}: {answer}")

    async with anyio.create_task_group() as tg:
        step = 8
        for k in range(step):
            tg.start_soon(creator, range(k, count, step))


async def open_readers(url: str, start: int, stop: int, tg: anyio.abc.TaskGroup) -> list[Reader]:
    """Open readers ``start`` .. ``stop - 1`` (64 at a time); their read loops run in ``tg``."""
    limiter = anyio.CapacityLimiter(OPEN_PARALLEL)
    readers: list[Reader] = []

    async def open_one(i: int) -> None:
        async with limiter:
            sse = await wire.open_sse(url, f"/v1/stream/scale/r{i}?offset=now&live=sse")
            if sse.status != 200:
                raise RuntimeError(f"SSE open of scale/r{i} answered {sse.status}")
            reader = Reader(i, sse)
            readers.append(reader)
            tg.start_soon(reader.read)

    async with anyio.create_task_group() as opening:
        for i in range(start, stop):
            opening.start_soon(open_one, i)
    return readers


async def windows(pid: int, count: int) -> tuple[list[float], list[float]]:
    """Return per-window server CPU (% of a core) and RSS (MB) over ``count`` windows."""
    cpu, rss = [], []
    meter = CpuMeter(pid)
    for _ in range(count):
        rss.append(rss_bytes(pid) / 1e6)
        meter.lap()
        t0 = time.perf_counter()
        await anyio.sleep(KEEPALIVE)
        used, t1 = meter.lap(), time.perf_counter()
        cpu.append(100 * used / (t1 - t0))
    return cpu, rss


async def wake_reach(url: str, readers: list[Reader], trials: int = TRIALS) -> list[float]:
    """Return ``trials`` times (ms) from an append to its reader seeing the data event."""
    rng = random.Random(7)
    times = []
    async with await wire.connect(url) as http:
        for n in range(trials):
            reader = rng.choice(readers)
            reader.data = anyio.Event()
            t0 = time.perf_counter()
            answer = await http.post_json(f"/v1/stream/scale/r{reader.index}", {"n": n})
            if answer.status not in (200, 204):
                raise RuntimeError(f"append failed: {answer.status} {answer.body!r}")
            with anyio.fail_after(10):
                await reader.data.wait()
            times.append((time.perf_counter() - t0) * 1000)
            await anyio.sleep(0.02)
    return times


async def measure(levels: list[int], runs: int, report: Report, url: str, pid: int) -> None:
    """Measure the baseline, then each level of readers, on the server at ``url``."""
    await create_streams(url, max(levels))
    await anyio.sleep(1.0)
    cpu, rss = await windows(pid, runs)
    report.add("connections.0.cpu", "no readers: server CPU (idle baseline)", "% of a core", cpu)
    report.add("connections.0.rss", "no readers: server RSS", "MB", rss, digits=0)
    readers: list[Reader] = []
    async with anyio.create_task_group() as tg:
        for level in levels:
            t0 = time.perf_counter()
            readers += await open_readers(url, len(readers), level, tg)
            opened = time.perf_counter() - t0
            await anyio.sleep(KEEPALIVE + 0.5)
            for reader in readers:
                reader.keepalives = 0
            cpu, rss = await windows(pid, runs)
            silent = sum(1 for r in readers if r.keepalives == 0)
            report.add(
                f"connections.{level}.cpu",
                f"{level:,} idle readers: server CPU (keepalives)",
                "% of a core",
                cpu,
            )
            report.add(
                f"connections.{level}.rss",
                f"{level:,} idle readers: server RSS",
                "MB",
                rss,
                digits=0,
            )
            reach = await wake_reach(url, readers, TRIALS)
            report.add(
                f"connections.{level}.reach",
                f"{level:,} idle readers: append -> one reader gets it",
                "ms",
                reach,
                digits=2,
            )
            report.note(
                f"{level:,} readers: opened in {opened:.1f} s; {silent} reader(s) got no "
                f"keepalive in {runs} windows of {KEEPALIVE} s"
            )
            if silent:
                report.note(f"LEVEL {level} FAILED: {silent} reader(s) were dropped or starved")
        tg.cancel_scope.cancel()
    for reader in readers:
        await reader.sse.aclose()


def main() -> int:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument(
        "--levels", default=None, help="reader counts, ascending (1000,5000,10000; quick: 1000)"
    )
    args = parse(parser)
    chosen = args.levels or ("1000" if args.quick else "1000,5000,10000")
    levels = [int(x) for x in chosen.split(",")]
    limit = raise_fd_limit()
    report = Report("connections.py", args)
    needed = max(levels) + 200
    if limit < needed:
        raise SystemExit(f"the open-file limit is {limit}; {needed} are needed (ulimit -Hn)")
    # The server's own cap (default 10,000) must leave room for the largest level, the
    # producer's connection and a few being closed.
    server_args = ["--keepalive", str(KEEPALIVE), "--max-connections", str(max(levels) + 100)]
    with pullwake_server(args=server_args) as server:
        anyio.run(measure, levels, args.runs, report, server.url, server.pid)
    report.note(
        "readers: raw anyio sockets in the benchmark process, each on its own wake stream "
        f"(offset=now, live=sse); windows of {KEEPALIVE} s (one keepalive interval); "
        f"open-file limit {limit} (the server inherits it), server --max-connections "
        f"{max(levels) + 100}"
    )
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
