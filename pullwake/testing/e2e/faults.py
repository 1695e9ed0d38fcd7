"""The fault catalogue, and one fault-matrix case: inject, measure, clear, account.

Each :class:`Fault` knows how to inject itself into a
:class:`~pullwake.testing.e2e.cluster.Cluster` and how to clear it. Targets: a **server** fault
hits the server the runner is attached to (on PostgreSQL, with two replicas, the runner must
then fail over to the other); a **network** fault hits every gateway, i.e. the whole path
between runners and servers (the producer still reaches the servers); a **database** fault
restarts PostgreSQL under the running servers; a **runner** fault SIGKILLs the runner process
and starts it again as a supervisor would.

:func:`run_case` runs one fault against a fresh deployment (one runner, two subscriptions over
four streams, a producer appending throughout) and returns a :class:`CaseResult`:

- ``detect``: seconds from the fault to the runner leaving ``streaming``
  (its transitions log says when).
  For a runner killed mid-handler: seconds from the kill until the claim it held was done
  again by the next instance (the lease must run out first). ``None``: nobody had anything to
  notice (the fault was over first, or the killed runner held nothing).
- ``recover``: seconds from the fault being cleared (the server listening again, the proxy
  forwarding again, the runner started again) until a message appended at that moment has been
  handled.
- the accounting: messages, lost (must be 0), duplicates and how many the kill explains.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import attrs

from ..postgres import PostgresServer
from .cluster import (
    Cluster,
    RunnerProcess,
    RunnerSpec,
    SubscriptionSpec,
    Topology,
    Tuning,
    wait_for,
)
from .ledger import ClaimRecord, completion_times, in_flight

RUNNER = "r1"
STREAMS = ("jobs/a/0", "jobs/a/1", "jobs/b/0", "jobs/b/1")


@attrs.frozen
class Scale:
    """How much work a case does, and how long its fault lasts."""

    warmup: int = 8
    interval: float = 0.1
    duration: float = 2.5
    #: Silent faults last longer: the runner notices them only by timeouts (heartbeats fail
    #: after about two intervals, the read after ``read_timeout``).
    silent_duration: float = 4.0
    settle: float = 90.0


@attrs.define
class Case:
    """One case in progress: the cluster, the fault's target, and what was observed."""

    cluster: Cluster
    #: The server a server fault hits (an index into ``cluster.servers``).
    server: int = 0
    #: The runner a runner fault hits.
    runner_id: str = RUNNER
    #: How long a mid-handler kill waits for the runner to hold a claim; after that it
    #: fails (``strict``) or kills anyway.
    patience: float = 30.0
    strict: bool = True
    injected_at: float = 0.0
    cleared_at: float = 0.0
    notes: list[str] = attrs.field(factory=list)
    #: For a runner killed mid-handler: the claim it held (subscription, generation, pid).
    held: tuple[str, int, int] | None = None
    #: Background work of the fault (periodic resets), stopped by clear().
    stop_flapping: anyio.Event | None = None

    @property
    def runner(self) -> RunnerProcess:
        return self.cluster.runners[self.runner_id]


class Fault:
    """A fault of the matrix: ``inject`` then, ``duration`` later, ``clear``."""

    name = ""
    title = ""
    kind = "network"
    postgres_only = False
    #: Noticed only by timeouts (nothing breaks, nothing answers).
    silent = False
    #: Seconds each handler holds after recording its claim (a window to kill it in).
    hold = 0.0
    #: Comfortably longer than the fault, so a runner cut off by it keeps its lease (a
    #: claim whose answer a fault lost waits this long before the work is woken again).
    lease_ttl_ms = 10_000

    async def inject(self, case: Case) -> None:
        raise NotImplementedError

    async def clear(self, case: Case) -> None:
        raise NotImplementedError

    def detect(self, case: Case, claims: Sequence[ClaimRecord]) -> float | None:
        """Seconds until the runner left ``streaming`` after the fault (None: it did not)."""
        for step in case.runner.transitions():
            if step.time >= case.injected_at - 0.01 and step.source[-1] == "streaming":
                return max(0.0, step.time - case.injected_at)
        return None


# -- server processes -----------------------------------------------------------------------


class ServerKill(Fault):
    name, title, kind = "server-sigkill", "server SIGKILL", "server"

    async def inject(self, case: Case) -> None:
        case.injected_at = time.time()
        await anyio.to_thread.run_sync(case.cluster.servers[case.server].kill)

    async def clear(self, case: Case) -> None:
        await anyio.to_thread.run_sync(case.cluster.servers[case.server].start)


class ServerTerm(ServerKill):
    name, title = "server-sigterm", "server SIGTERM"

    async def inject(self, case: Case) -> None:
        case.injected_at = time.time()
        await anyio.to_thread.run_sync(case.cluster.servers[case.server].terminate)


class ServerStop(Fault):
    name, title, kind = "server-sigstop", "server SIGSTOP (silent)", "server"
    silent = True

    async def inject(self, case: Case) -> None:
        case.injected_at = time.time()
        case.cluster.servers[case.server].pause()

    async def clear(self, case: Case) -> None:
        case.cluster.servers[case.server].resume()


# -- the network ----------------------------------------------------------------------------


class Blackhole(Fault):
    name, title = "proxy-blackhole", "proxy blackhole"
    silent = True

    async def inject(self, case: Case) -> None:
        case.injected_at = time.time()
        for gateway in case.cluster.gateways:
            gateway.blackhole()

    async def clear(self, case: Case) -> None:
        for gateway in case.cluster.gateways:
            gateway.forward()


class Flapping(Fault):
    """Break every connection again and again (every 0.25 s) while the fault lasts."""

    async def _break(self, case: Case) -> None:
        raise NotImplementedError

    async def inject(self, case: Case) -> None:
        case.stop_flapping = stop = anyio.Event()
        assert case.cluster.tg is not None
        case.injected_at = time.time()
        await self._break(case)

        async def again() -> None:
            for _ in range(10_000):
                with anyio.move_on_after(0.25):
                    await stop.wait()
                if stop.is_set():
                    return
                await self._break(case)

        case.cluster.tg.start_soon(again)

    async def clear(self, case: Case) -> None:
        assert case.stop_flapping is not None
        case.stop_flapping.set()


class Reset(Flapping):
    name, title = "proxy-rst", "proxy RST"

    async def _break(self, case: Case) -> None:
        for gateway in case.cluster.gateways:
            await gateway.reset()


class Close(Flapping):
    name, title = "proxy-fin", "proxy FIN"

    async def _break(self, case: Case) -> None:
        for gateway in case.cluster.gateways:
            await gateway.close()


class HungConnect(Fault):
    name, title = "hung-connect", "hung connect (accepted, never answered)"
    silent = True

    async def inject(self, case: Case) -> None:
        case.injected_at = time.time()
        for gateway in case.cluster.gateways:
            gateway.blackhole()
            # Cut the open connections so the runner must connect again, into the hang.
            await gateway.reset()

    async def clear(self, case: Case) -> None:
        for gateway in case.cluster.gateways:
            gateway.forward()


class Refused(Fault):
    name, title = "refused", "connection refused"

    async def inject(self, case: Case) -> None:
        case.injected_at = time.time()
        for gateway in case.cluster.gateways:
            await gateway.refuse()
            await gateway.reset()

    async def clear(self, case: Case) -> None:
        for gateway in case.cluster.gateways:
            await gateway.accept_again()


class ErrorBurst(Fault):
    name, title = "http-5xx", "burst of 500/503"

    async def inject(self, case: Case) -> None:
        case.injected_at = time.time()
        for gateway in case.cluster.gateways:
            gateway.fail_requests((500, 503))

    async def clear(self, case: Case) -> None:
        for gateway in case.cluster.gateways:
            gateway.pass_requests()
        answered = sum(g.errors_answered for g in case.cluster.gateways)
        case.notes.append(f"{answered} requests answered 500/503")


# -- the database ---------------------------------------------------------------------------


class PostgresRestart(Fault):
    name, title, kind = "postgres-restart", "PostgreSQL restart", "database"
    postgres_only = True

    async def inject(self, case: Case) -> None:
        postgres = case.cluster.postgres
        assert postgres is not None
        case.injected_at = time.time()
        await anyio.to_thread.run_sync(postgres.stop, "fast")

    async def clear(self, case: Case) -> None:
        postgres = case.cluster.postgres
        assert postgres is not None
        await anyio.to_thread.run_sync(postgres.start)


# -- runner processes -----------------------------------------------------------------------


class RunnerKillMidHandler(Fault):
    name, title, kind = "runner-kill-mid-handler", "runner SIGKILL mid-handler", "runner"
    hold = 1.0
    lease_ttl_ms = 4_000

    async def inject(self, case: Case) -> None:
        runner = case.runner
        pid = runner.pid

        async def holding() -> bool:
            claim = in_flight(await case.cluster.claims(), pid)
            if claim is not None:
                case.held = (claim.subscription, claim.generation, pid)
            return claim is not None

        if not await wait_for(holding, timeout=case.patience, interval=0.05) and case.strict:
            raise AssertionError("the runner never held a claim to be killed in")
        case.injected_at = time.time()
        await anyio.to_thread.run_sync(runner.kill)
        if case.held is not None:
            case.notes.append(f"killed while holding {case.held[0]!r} generation {case.held[1]}")

    async def clear(self, case: Case) -> None:
        case.runner.start()

    def detect(self, case: Case, claims: Sequence[ClaimRecord]) -> float | None:
        """Seconds until another instance recorded the killed claim's subscription again."""
        if case.held is None:
            return None
        sub, _, pid = case.held
        later = [
            c.recorded_at
            for c in claims
            if c.subscription == sub and c.instance != pid and c.recorded_at > case.injected_at
        ]
        return min(later) - case.injected_at if later else None


class RunnerKill(RunnerKillMidHandler):
    """SIGKILL at a random moment: mid-handler if a claim is held within a few seconds."""

    name, title = "runner-sigkill", "runner SIGKILL"


class RunnerKillBetweenWakes(Fault):
    name, title, kind = "runner-kill-idle", "runner SIGKILL between wakes", "runner"
    lease_ttl_ms = 4_000

    async def inject(self, case: Case) -> None:
        cluster = case.cluster
        assert cluster.producer is not None
        cluster.producer.pause()
        try:
            if not await cluster.wait_quiescent(30):
                raise AssertionError("the runner never became idle")
            case.injected_at = time.time()
            await anyio.to_thread.run_sync(case.runner.kill)
        finally:
            cluster.producer.resume()

    async def clear(self, case: Case) -> None:
        case.runner.start()

    def detect(self, case: Case, claims: Sequence[ClaimRecord]) -> float | None:
        return None


FAULTS: tuple[Fault, ...] = (
    ServerKill(),
    ServerTerm(),
    ServerStop(),
    Blackhole(),
    Reset(),
    Close(),
    HungConnect(),
    Refused(),
    ErrorBurst(),
    PostgresRestart(),
    RunnerKillMidHandler(),
    RunnerKillBetweenWakes(),
)
BY_NAME = {fault.name: fault for fault in FAULTS}


def faults_for(database: str) -> list[Fault]:
    return [f for f in FAULTS if database == "postgres" or not f.postgres_only]


# -- one case -------------------------------------------------------------------------------


def matrix_topology(database: str, backend: str, fault: Fault) -> Topology:
    """One runner on its own wake stream; an explicit and a glob subscription; 1 or 2 servers."""
    wake = f"wake/{RUNNER}"
    return Topology(
        database=database,
        backend=backend,
        servers=2 if database == "postgres" else 1,
        runners=(RunnerSpec(RUNNER, wake),),
        subscriptions=(
            SubscriptionSpec(
                "a",
                wake_stream=wake,
                streams=STREAMS[:2],  # type: ignore[arg-type]  # mypy cannot type attrs' converter=tuple
                lease_ttl_ms=fault.lease_ttl_ms,
            ),
            SubscriptionSpec(
                "b", wake_stream=wake, pattern="jobs/b/*", lease_ttl_ms=fault.lease_ttl_ms
            ),
        ),
        streams=STREAMS,
        hold=fault.hold,
        tuning=Tuning(),
    )


@attrs.frozen
class CaseResult:
    """What one matrix case measured and found."""

    fault: str
    title: str
    database: str
    backend: str
    detect: float | None
    recover: float | None
    produced: int
    lost: int
    duplicates: int
    explained: int
    problems: tuple[str, ...]
    notes: tuple[str, ...]
    logs: str = attrs.field(default="", repr=False)


async def run_case(
    fault: Fault,
    *,
    database: str,
    backend: str,
    database_url: str,
    workdir: Path,
    postgres: PostgresServer | None = None,
    scale: Scale | None = None,
) -> CaseResult:
    """Run ``fault`` once against a fresh deployment; see the module docstring."""
    scale = scale or Scale()
    topology = matrix_topology(database, backend, fault)
    async with Cluster(topology, workdir, database_url, postgres=postgres) as cluster:
        producer = cluster.producer
        assert producer is not None
        if not await cluster.wait_streaming(30):
            raise AssertionError("the runner did not start streaming\n" + cluster.logs_tail())
        for index in range(scale.warmup):
            await producer.append(STREAMS[index % len(STREAMS)])
        if not await cluster.wait_handled(producer.produced, 30):
            raise AssertionError("warm-up messages not handled\n" + cluster.logs_tail())
        case = Case(cluster)
        if fault.kind == "server":
            case.server = await cluster.attached_server(RUNNER) or 0
        recover: float | None = None
        stop = anyio.Event()
        limit = int((scale.duration + 120) / scale.interval)
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: producer.steady(STREAMS, interval=scale.interval, stop=stop, limit=limit)
            )
            await anyio.sleep(min(0.5, scale.duration))
            await fault.inject(case)
            await anyio.sleep(scale.silent_duration if fault.silent else scale.duration)
            await fault.clear(case)
            case.cleared_at = time.time()
            probe = await producer.append(STREAMS[0])
            if await cluster.wait_handled({(STREAMS[0], probe)}, 60):
                first = completion_times(await cluster.claims()).get((STREAMS[0], probe))
                if first is not None:
                    recover = max(0.0, first - case.cleared_at)
            stop.set()
        if database == "postgres" and fault.kind == "server":
            after = await cluster.attached_server(RUNNER)
            case.notes.append(f"runner on server {case.server} before, {after} after")
        verdict = await cluster.verdict(settle=scale.settle)
        detect = fault.detect(case, await cluster.claims())
        accounting = verdict.accounting
        return CaseResult(
            fault=fault.name,
            title=fault.title,
            database=database,
            backend=backend,
            detect=detect,
            recover=recover,
            produced=accounting.produced,
            lost=len(accounting.lost),
            duplicates=accounting.duplicates,
            explained=accounting.explained,
            problems=tuple(verdict.problems()),
            notes=tuple(case.notes),
            logs=cluster.logs_tail() if verdict.problems() else "",
        )


def check(result: CaseResult, fault: Fault) -> list[str]:
    """Return the invariants a case broke: lost = 0, duplicates only where a kill explains."""
    problems = list(result.problems)
    if result.duplicates and fault.name != RunnerKillMidHandler.name:
        problems.append(
            f"{result.duplicates} duplicate(s) although no runner was killed mid-handler"
        )
    return problems
