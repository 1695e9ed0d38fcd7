"""Measure wake latency: from an append to the handler starting, one runner, three servers.

Run alone: ``.venv/bin/python bench/latency.py [--servers sqlite,postgres,reference]
[--backends asyncio,trio]``.
For each server (pullwake on SQLite, pullwake on PostgreSQL, the npm reference server) and
each backend (asyncio: the pullwake server on uvicorn and the runner on asyncio; trio: the
server with ``--backend trio``, hypercorn on trio, and the runner on trio; the reference
server has no backend, only the runner changes), one pullwake runner with default settings
serves one subscription over one stream. The producer
appends one message, the clock stops when the handler starts (the runner has read the wake
from SSE and claimed the subscription), and the next append waits until the runner has acked
``done``, so every sample is an idle subscription woken from scratch. A run is a fresh runner
and ``--samples`` samples after a warm-up; each figure is the median over the runs of that
run's p50 or p99. The producer and the runner share this process (the producer uses a raw
HTTP client so it costs little); the server runs in its own process. For a breakdown it also
reports the median of the append's own round trip (the producer's request until its answer);
the rest is the SSE push, the runner's claim and calling the handler. (The claim is not timed
apart: that needs a pass-through ``Runner(transport=...)``, and a runner given a transport may
take another HTTP path than the default one measured here.)
"""

from __future__ import annotations

import itertools
import sys
import time

import anyio
import wire
from figures import Report, arguments, parse, percentile
from servers import NAMES, TITLES, target
from workload import workload

WARMUP = 20
PARTS = {
    "append": "the append's round trip",
    "after_append": "append answered -> handler start (push, claim, call)",
}


async def one_run(url: str, tag: str, samples: int) -> dict[str, list[float]]:
    """Return ``samples`` wake latencies and their parts, in ms, from a fresh runner."""
    parts: dict[str, list[float]] = {"total": [], "append": [], "after_append": []}
    async with workload(url, tag, 1) as work, await wire.connect(url) as http:
        path = work.paths[0]
        for i in range(samples + WARMUP):
            work.probe.arm(0)
            t0 = time.perf_counter()
            answer = await http.post_json(path, {"i": i})
            answered = time.perf_counter()
            if answer.status not in (200, 204):
                raise RuntimeError(f"append failed: {answer}")
            started = await work.probe.wait(0)
            if i >= WARMUP:
                parts["total"].append((started - t0) * 1000)
                parts["append"].append((answered - t0) * 1000)
                parts["after_append"].append((started - answered) * 1000)
            await work.wait_claims(i + 1)
    return parts


def main() -> int:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--servers", default=",".join(NAMES), help="comma-separated servers")
    parser.add_argument("--samples", type=int, default=None, help="samples per run (200)")
    parser.add_argument("--backends", default="asyncio,trio", help="asyncio, trio or both")
    args = parse(parser)
    samples = args.samples or (60 if args.quick else 200)
    report = Report("latency.py", args)
    for name, backend in itertools.product(args.servers.split(","), args.backends.split(",")):
        with target(name, backend=backend) as server:
            runs = [
                anyio.run(one_run, server.url, f"lat{backend}{run}", samples, backend=backend)
                for run in range(args.runs)
            ]
        title = f"{TITLES[name]}, {backend}"
        key = f"latency.{name}.{backend}"
        for q in (50, 99):
            report.add(
                f"{key}.p{q}",
                f"{title}: append -> handler start, p{q}",
                "ms",
                [percentile(r["total"], q) for r in runs],
                digits=2,
            )
        for part, what in PARTS.items():
            report.add(
                f"{key}.{part}",
                f"{title}: {what}, p50",
                "ms",
                [percentile(r[part], 50) for r in runs],
                digits=2,
            )
    report.note(
        f"each run: a fresh runner (default settings), {samples} samples after "
        f"{WARMUP} warm-up ones, one subscription, each append waits for the previous ack"
    )
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
