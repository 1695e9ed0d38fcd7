"""The chaos soak: many runners, steady work, random faults from the matrix, then an audit.

Theory of operation
-------------------
:func:`run_soak` starts a deployment (:func:`soak_topology`): on SQLite one server, on
PostgreSQL two replicas; four runner processes, two of which (``p1``, ``p2``) **share** the
wake stream ``wake/pool`` and race to claim its subscriptions, while ``s1`` and ``s2`` each
have their own wake stream; explicit and glob subscriptions over twelve streams. Runners and
servers alternate between asyncio and trio.

A producer appends ``messages`` messages at a steady rate over ``duration`` seconds while a
chaos controller, driven by ``random.Random(seed)`` (so the same seed gives the same sequence
of faults, targets and durations; only the timing of the machine varies), repeats: a calm
spell of 2-5 s, then one fault of the matrix for 0.5-3 s on a random target, then clears it.
Faults never overlap, and each lasts well under the lease (15 s), so a runner cut off by one
never loses its lease to it.

At the end the chaos stops, the producer finishes, and the harness waits (bounded) for
quiescence, then audits: every message handled, every cursor at its tail, no lease held, no
wake in flight, every duplicate explained by a SIGKILL of the runner that recorded it, no 500
in the server logs, and every runner stops cleanly on SIGTERM.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import attrs

from ..postgres import PostgresServer
from .cluster import Cluster, RunnerSpec, SubscriptionSpec, Topology, Tuning
from .faults import (
    Blackhole,
    Case,
    Close,
    ErrorBurst,
    Fault,
    HungConnect,
    PostgresRestart,
    Refused,
    Reset,
    RunnerKill,
    ServerKill,
    ServerStop,
    ServerTerm,
)

LEASE_TTL_MS = 15_000
#: Seconds of calm between faults, and how long a fault lasts (both drawn uniformly).
CALM = (2.0, 5.0)
FAULT_LENGTH = (0.5, 3.0)


def soak_topology(database: str, backend: str) -> Topology:
    """Four runners (two racing on one wake stream), six subscriptions, twelve streams."""
    other = "trio" if backend == "asyncio" else "asyncio"
    groups = {"pool": ("p1", "p2"), "s1": ("s1",), "s2": ("s2",)}
    runners: list[RunnerSpec] = []
    subscriptions = []
    streams: list[str] = []
    for index, (group, members) in enumerate(groups.items()):
        wake = f"wake/{group}"
        for member in members:
            flavour = backend if len(runners) % 2 == 0 else other
            runners.append(RunnerSpec(member, wake, backend=flavour))
        explicit = (f"jobs/{group}/e0", f"jobs/{group}/e1")
        globbed = (f"jobs/{group}/g/0", f"jobs/{group}/g/1")
        streams += [*explicit, *globbed]
        subscriptions.append(
            SubscriptionSpec(
                f"{group}-e",
                wake_stream=wake,
                streams=explicit,  # type: ignore[arg-type]  # mypy cannot type attrs' converter=tuple
                lease_ttl_ms=LEASE_TTL_MS,
            )
        )
        subscriptions.append(
            SubscriptionSpec(
                f"{group}-g",
                wake_stream=wake,
                pattern=f"jobs/{group}/g/*",
                lease_ttl_ms=LEASE_TTL_MS,
            )
        )
        if index == 0:
            # The shared wake stream gets a third subscription, so racing has more to race on.
            single = (f"jobs/{group}/x",)
            streams += single
            subscriptions.append(
                SubscriptionSpec(
                    f"{group}-x",
                    wake_stream=wake,
                    streams=single,  # type: ignore[arg-type]  # mypy cannot type attrs' converter=tuple
                    lease_ttl_ms=LEASE_TTL_MS,
                )
            )
    servers = 2 if database == "postgres" else 1
    return Topology(
        database=database,
        backend=backend,
        servers=servers,
        runners=tuple(runners),
        subscriptions=tuple(subscriptions),
        streams=tuple(streams),
        hold=0.05,
        tuning=Tuning(),
        server_backends=(backend, other)[:servers],
    )


def chaos_menu(database: str) -> list[Fault]:
    """The matrix's faults, as the controller may inject them.

    A runner SIGKILL comes at a random moment (mid-handler when the runner holds a claim
    within 3 s) and is listed three times: it is the one fault that may legitimately cause
    duplicates, so the soak exercises their accounting often.
    """
    kill = RunnerKill()
    menu: list[Fault] = [
        kill,
        kill,
        ServerKill(),
        ServerTerm(),
        ServerStop(),
        Blackhole(),
        Reset(),
        Close(),
        HungConnect(),
        Refused(),
        ErrorBurst(),
        kill,
    ]
    if database == "postgres":
        menu.append(PostgresRestart())
    return menu


@attrs.frozen
class Injection:
    at: float
    fault: str
    target: str
    duration: float


@attrs.frozen
class SoakResult:
    database: str
    seed: int
    duration: float
    injections: tuple[Injection, ...]
    produced: int
    handled: int
    lost: int
    duplicates: int
    explained: int
    #: Seconds from the end of the chaos until everything was handled and at rest.
    settle: float
    problems: tuple[str, ...]
    logs: str = attrs.field(default="", repr=False)

    def summary(self) -> dict[str, Any]:
        counts = Counter(i.fault for i in self.injections)
        return {
            "database": self.database,
            "seed": self.seed,
            "duration_s": round(self.duration, 1),
            "faults": dict(sorted(counts.items())),
            "produced": self.produced,
            "handled": self.handled,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "explained_by_kills": self.explained,
            "settle_s": round(self.settle, 1),
            "problems": list(self.problems),
        }


async def chaos(cluster: Cluster, rng: random.Random, until: float, log: list[Injection]) -> None:
    """Inject one random fault at a time until ``until`` (monotonic seconds)."""
    menu = chaos_menu(cluster.topology.database)
    runner_ids = sorted(cluster.runners)
    for _ in range(10_000):
        await anyio.sleep(rng.uniform(*CALM))
        if time.monotonic() >= until:
            return
        fault = rng.choice(menu)
        length = rng.uniform(*FAULT_LENGTH)
        case = Case(cluster, patience=3.0, strict=False)
        target = "network"
        if fault.kind == "server":
            case.server = rng.randrange(len(cluster.servers))
            target = cluster.servers[case.server].name
        elif fault.kind == "runner":
            case.runner_id = rng.choice(runner_ids)
            target = case.runner_id
        elif fault.kind == "database":
            target = "postgres"
        await fault.inject(case)
        try:
            await anyio.sleep(length)
        finally:
            with anyio.CancelScope(shield=True):
                await fault.clear(case)
        log.append(Injection(case.injected_at, fault.name, target, length))


async def run_soak(
    *,
    database: str,
    backend: str,
    database_url: str,
    workdir: Path,
    duration: float,
    messages: int,
    seed: int,
    postgres: PostgresServer | None = None,
    settle: float = 180.0,
) -> SoakResult:
    """Run the chaos soak once; see the module docstring."""
    topology = soak_topology(database, backend)
    rng = random.Random(seed)
    injections: list[Injection] = []
    async with Cluster(topology, workdir, database_url, postgres=postgres) as cluster:
        producer = cluster.producer
        assert producer is not None
        if not await cluster.wait_streaming(60):
            raise AssertionError("the runners did not start streaming\n" + cluster.logs_tail())
        started = time.monotonic()
        until = started + duration
        interval = duration / max(1, messages)
        never = anyio.Event()
        async with anyio.create_task_group() as tg:
            # The producer appends all its messages, however long the outages made it take.
            tg.start_soon(
                lambda: producer.steady(
                    topology.streams, interval=interval, stop=never, limit=messages
                )
            )
            await chaos(cluster, rng, until, injections)
        chaos_ended = time.monotonic()
        quiet = await cluster.wait_quiescent(settle)
        settled = time.monotonic() - chaos_ended
        verdict = await cluster.verdict(settle=1.0)
        problems = verdict.problems()
        if not quiet:
            problems.append(f"not at rest {settle} s after the chaos ended")
        accounting = verdict.accounting
        return SoakResult(
            database=database,
            seed=seed,
            duration=chaos_ended - started,
            injections=tuple(injections),
            produced=accounting.produced,
            handled=accounting.handled,
            lost=len(accounting.lost),
            duplicates=accounting.duplicates,
            explained=accounting.explained,
            settle=settled,
            problems=tuple(problems),
            logs=cluster.logs_tail() if problems else "",
        )
