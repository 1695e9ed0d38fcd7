"""Measure wake latency: from an append to the handler starting, one runner, three servers.

Run alone: ``.venv/bin/python bench/latency.py [--servers sqlite,postgres,reference]``.
For each server (pullwake on SQLite, pullwake on PostgreSQL, the npm reference server), one
pullwake runner with default settings serves one subscription over one stream. The producer
appends one message, the clock stops when the handler starts (the runner has read the wake
from SSE and claimed the subscription), and the next append waits until the runner has acked
``done``, so every sample is an idle subscription woken from scratch. A run is a fresh runner
and ``--samples`` samples after a warm-up; each figure is the median over the runs of that
run's p50 or p99. The producer and the runner share this process (the producer uses a raw
HTTP client so it costs little); the server runs in its own process. For a breakdown it also
reports the medians of three parts: the append's own round trip (the producer's request until
its answer), the time from sending the append to the runner sending its claim (the server
pushed the wake over SSE, the runner parsed and queued it), and the claim's round trip (timed
by a pass-through ``Runner(transport=...)``); what remains is calling the handler.
"""

from __future__ import annotations

import sys
import time

import anyio
import wire
from figures import Report, arguments, percentile
from servers import NAMES, TITLES, target
from workload import workload

WARMUP = 20
PARTS = {
    "append": "the append's round trip",
    "to_claim": "append sent -> claim sent (wake pushed, parsed, queued)",
    "claim": "the claim's round trip",
}


async def one_run(url: str, tag: str, samples: int) -> dict[str, list[float]]:
    """Return ``samples`` wake latencies and their parts, in ms, from a fresh runner."""
    parts: dict[str, list[float]] = {"total": [], "append": [], "to_claim": [], "claim": []}
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
                timer = work.timer
                parts["total"].append((started - t0) * 1000)
                parts["append"].append((answered - t0) * 1000)
                parts["to_claim"].append((timer.sent - t0) * 1000)
                parts["claim"].append((timer.answered - timer.sent) * 1000)
            await work.wait_claims(i + 1)
    return parts


def main() -> int:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--servers", default=",".join(NAMES), help="comma-separated servers")
    parser.add_argument("--samples", type=int, default=200, help="samples per run")
    args = parser.parse_args()
    report = Report("latency.py", args)
    for name in args.servers.split(","):
        with target(name) as server:
            runs = [
                anyio.run(one_run, server.url, f"lat{run}", args.samples)
                for run in range(args.runs)
            ]
        title = TITLES[name]
        for q in (50, 99):
            report.add(
                f"latency.{name}.p{q}",
                f"{title}: append -> handler start, p{q}",
                "ms",
                [percentile(r["total"], q) for r in runs],
                digits=2,
            )
        for part, what in PARTS.items():
            report.add(
                f"latency.{name}.{part}",
                f"{title}: {what}, p50",
                "ms",
                [percentile(r[part], 50) for r in runs],
                digits=2,
            )
    report.note(
        f"each run: a fresh runner (default settings, asyncio), {args.samples} samples after "
        f"{WARMUP} warm-up ones, one subscription, each append waits for the previous ack"
    )
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
