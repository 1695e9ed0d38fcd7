"""Measure wake throughput and CPU per cycle: three servers, asyncio and trio, and scaling.

Run alone: ``.venv/bin/python bench/throughput.py [--servers ...] [--seconds S] [--quick]``.
A cycle is append → wake → claim → handler → ack ``done``. Each subscription (lane) has its
own stream and a closed-loop producer in this process (raw HTTP client: append one message,
wait until the handler has started for it, append the next; the ack of the previous claim may
still be in flight, the server then issues the next wake when it arrives, as for any busy
worker). The runners are child processes (``bench/runner_app.py``: one
:class:`~pullwake.runtime.runner.Runner` each, default settings), so their CPU is theirs
alone. Figures per window: handler starts per second, and the CPU per cycle of the pullwake
server process, of the runner processes, and of PostgreSQL's own processes (the postmaster
and its children, ``/proc/<pid>/stat``) when on PostgreSQL.

Sections:

- **matrix**: pullwake on SQLite and PostgreSQL and the reference server, 1 and 8
  subscriptions, one runner process; on asyncio (server: uvicorn) and on trio (server
  ``--backend trio``, i.e. hypercorn on trio, and the runner on trio; the reference server
  has no backend, only the runner changes);
- **scaling** (asyncio): 1, 8, 64 and 512 subscriptions on one runner process, and 64
  subscriptions over 1, 4 and 16 runner processes;
- **profile**: py-spy on the server and the runner during an 8-subscription run, folded into
  components (:mod:`breakdown`), for SQLite on asyncio and trio and PostgreSQL on asyncio.

One server process per (server, backend); per configuration fresh streams, subscriptions
and runner processes, a warm-up, then ``--runs`` windows of ``--seconds`` one after another
(each window is one run of the figure; the scaling rows take at most 3). ``--quick``: 2
windows of 1 s, scaling up to 64 subscriptions and 4 runner processes, 3 s profiles.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from breakdown import leaves, record
from figures import Report, arguments, parse
from fleet import fleet
from machine import CpuMeter, TreeMeter
from servers import NAMES, TITLES, Target, target

WARMUP = 1.0
LANES = (1, 8)
BACKENDS = ("asyncio", "trio")
SCALE_LANES = (1, 8, 64, 512)
SCALE_PROCS = (1, 4, 16)
#: Subscriptions spread over the runner processes of the process-scaling rows.
PROCS_LANES = 64
PROFILE_CONFIGS = (("sqlite", "asyncio"), ("sqlite", "trio"), ("postgres", "asyncio"))


async def windows(
    server: Target, tag: str, lanes: int, procs: int, backend: str, runs: int, seconds: float
) -> list[dict[str, float]]:
    """Run one configuration; return the figures of each measured window."""
    results = []
    async with fleet(server.url, tag, lanes, procs, backend) as work:
        await anyio.sleep(WARMUP)
        server_meter = CpuMeter(server.pid)
        runner_meters = [CpuMeter(pid) for pid in work.pids]
        pg_meter = TreeMeter(server.postgres_pid) if server.postgres_pid else None
        producer_meter = CpuMeter(os.getpid())
        for _ in range(runs):
            producer_meter.lap()
            server_meter.lap()
            for m in runner_meters:
                m.lap()
            if pg_meter is not None:
                pg_meter.lap()
            before, t0 = work.cycles, time.perf_counter()
            await anyio.sleep(seconds)
            after, t1 = work.cycles, time.perf_counter()
            used_server = server_meter.lap()
            used_runner = sum(m.lap() for m in runner_meters)
            used_pg = pg_meter.lap() if pg_meter is not None else float("nan")
            used_producer = producer_meter.lap()
            elapsed = t1 - t0
            # No cycle in a window: the per-cycle figures are undefined (shown as n/a).
            cycles = (after - before) or math.nan
            results.append(
                {
                    "rate": (after - before) / elapsed,
                    "server_cycle": 1e6 * used_server / cycles,
                    "runner_cycle": 1e6 * used_runner / cycles,
                    "pg_cycle": 1e6 * used_pg / cycles,
                    "server_cpu": 100 * used_server / elapsed,
                    "runner_cpu": 100 * used_runner / elapsed,
                    "pg_cpu": 100 * used_pg / elapsed,
                    "producer_cpu": 100 * used_producer / elapsed,
                }
            )
    return results


async def profiled(
    server: Target, tag: str, lanes: int, backend: str, seconds: float, folder: Path
) -> dict[str, Any]:
    """Run one configuration with py-spy on the server and the runner; return the samples."""
    out: dict[str, Any] = {}
    async with fleet(server.url, tag, lanes, 1, backend) as work:
        await anyio.sleep(WARMUP)
        paths = {"server": folder / f"{tag}-server.txt", "runner": folder / f"{tag}-runner.txt"}
        pids = {"server": server.pid, "runner": work.pids[0]}
        errors: dict[str, str | None] = {}

        async def one(side: str) -> None:
            errors[side] = await record(pids[side], seconds, paths[side])

        async with anyio.create_task_group() as tg:
            for side in paths:
                tg.start_soon(one, side)
    for side, path in paths.items():
        error = errors.get(side)
        out[side] = {"error": error} if error else {"frames": dict(leaves(path.read_text()))}
    return out


#: (key suffix, label, unit, digits) of the figures of one configuration.
SERIES = (
    ("", "cycles/s", "cycles/s", 0),
    (".server_cycle", "server CPU per cycle", "µs", 0),
    (".runner_cycle", "runner CPU per cycle", "µs", 0),
    (".server_cpu", "server CPU", "% of a core", 0),
    (".runner_cpu", "runner processes' CPU", "% of a core", 0),
    (".producer_cpu", "producers' CPU (the benchmark process)", "% of a core", 0),
)
PG_SERIES = (
    (".pg_cycle", "PostgreSQL processes' CPU per cycle", "µs", 0),
    (".pg_cpu", "PostgreSQL processes' CPU", "% of a core", 0),
)


def add(report: Report, key: str, title: str, runs: list[dict[str, float]], pg: bool) -> None:
    for suffix, label, unit, digits in SERIES + (PG_SERIES if pg else ()):
        name = suffix.lstrip(".") or "rate"
        report.add(
            f"{key}{suffix}", f"{title}, {label}", unit, [r[name] for r in runs], digits=digits
        )


def main() -> int:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--servers", default=",".join(NAMES), help="comma-separated servers")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="asyncio, trio or both")
    parser.add_argument("--seconds", type=float, default=None, help="measured window per run")
    parser.add_argument(
        "--sections", default="matrix,scaling,profile", help="matrix, scaling, profile"
    )
    parser.add_argument(
        "--scaling-servers", default="sqlite,postgres", help="servers of the scaling tables"
    )
    args = parse(parser)
    seconds = args.seconds or (1.0 if args.quick else 2.0)
    sections = set(args.sections.split(","))
    servers = args.servers.split(",")
    backends = args.backends.split(",")
    report = Report("throughput.py", args)
    scale_lanes = SCALE_LANES if not args.quick else (1, 8, 64)
    scale_procs = SCALE_PROCS if not args.quick else (1, 4)
    scale_runs = max(1, min(args.runs, 3))
    profiles: dict[str, Any] = {}
    for name in servers:
        for backend in backends:
            wanted_matrix = "matrix" in sections
            wanted_scaling = (
                "scaling" in sections
                and backend == "asyncio"
                and name in args.scaling_servers.split(",")
            )
            wanted_profile = "profile" in sections and (name, backend) in PROFILE_CONFIGS
            if not (wanted_matrix or wanted_scaling or wanted_profile):
                continue
            with target(name, backend=backend) as server:
                pg = server.postgres_pid is not None
                title = f"{TITLES[name]}, {backend}"
                if wanted_matrix:
                    for lanes in LANES:
                        runs = anyio.run(
                            windows,
                            server,
                            f"tp{lanes}{backend}",
                            lanes,
                            1,
                            backend,
                            args.runs,
                            seconds,
                            backend=backend,
                        )
                        add(
                            report,
                            f"throughput.{name}.{backend}.{lanes}",
                            f"{title}: {lanes} subscription(s)",
                            runs,
                            pg,
                        )
                if wanted_scaling:
                    rows = [(f"subs{n}", n, 1) for n in scale_lanes if n not in LANES]
                    rows += [(f"procs{p}", PROCS_LANES, p) for p in scale_procs if p != 1]
                    for label, lanes, procs in rows:
                        runs = anyio.run(
                            windows,
                            server,
                            f"sc{label}",
                            lanes,
                            procs,
                            backend,
                            scale_runs,
                            seconds,
                        )
                        add(
                            report,
                            f"scale.{name}.{label}",
                            f"{TITLES[name]}: {lanes} subscriptions, {procs} runner process(es)",
                            runs,
                            pg,
                        )
                if wanted_profile:
                    with tempfile.TemporaryDirectory(prefix="bench-pyspy-") as folder:
                        profiles[f"{name}.{backend}"] = anyio.run(
                            profiled,
                            server,
                            f"pf{backend}",
                            8,
                            backend,
                            3.0 if args.quick else 8.0,
                            Path(folder),
                            backend=backend,
                        )
    report.note(
        f"each configuration: fresh streams, subscriptions and runner processes (default "
        f"settings), {WARMUP} s warm-up, then {args.runs} windows of {seconds} s one after "
        f"another (scaling rows: {scale_runs}); the 1- and 8-subscription rows of the scaling "
        "table are the matrix's (asyncio)"
    )
    if profiles:
        report.note(
            "profile: py-spy record --format raw -r 200 on the server and the "
            "runner process during an 8-subscription run; samples folded by the file of the "
            "innermost frame (bench/breakdown.py)"
        )
    report.extra["profiles"] = profiles
    report.save()
    print(json.dumps(profiles, indent=1) if profiles else "", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
