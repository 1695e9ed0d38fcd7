"""Start a whole pullwake deployment as real processes, feed it, break it, and check it.

Theory of operation
-------------------
A :class:`Cluster` is one deployment on 127.0.0.1, described by a :class:`Topology`:

- one ``pullwake server`` process on SQLite, or several on one PostgreSQL database
  (:class:`~pullwake.testing.ServerProcess`, restartable on the same port);
- one :class:`~pullwake.testing.FaultGateway` per server, in this process: runners reach the
  servers only through these, so the network between them can be broken on demand;
- runner processes (:class:`RunnerProcess`: ``pullwake run
  pullwake.testing.e2e.ledger:handle``), each with every gateway's URL, its own runner id and a
  wake stream (several may share one); each writes its lifecycle transitions as JSON lines
  (``--transitions-log``), which the harness reads to learn a runner's state;
- a :class:`Producer` that appends numbered messages straight to the servers (not through the
  gateways) and makes sure each is appended exactly once even when an answer is lost.

The test (or the chaos controller) injects faults while the producer appends, then waits for
**quiescence** (every appended message is in a ledger, and on the server every subscription's
cursors are at their streams' tails, with no lease held and no wake in flight) and judges the
run with :meth:`Cluster.verdict`: lost messages, duplicates and their explanations
(:mod:`pullwake.testing.e2e.ledger`), stuck subscriptions, 500s in the server logs, and a
clean exit of every runner on SIGTERM at the end.

Everything is bounded: process starts (30 s), stops (10 s), each HTTP request (5 s), each
wait (its own timeout, and a loop count). :class:`Cluster` is an async context manager whose
exit kills whatever is still running, also when the test failed.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import attrs
import httpx

from pullwake.runtime import SubscriptionSpec

from ..client import subscription_body
from ..gateway import FaultGateway
from ..postgres import PostgresServer
from ..runner import RunnerProcess as _RunnerProcess
from ..server import ServerProcess
from ..waiting import wait_until
from .ledger import (
    HOLD_ENV,
    LEDGER_ENV,
    Accounting,
    ClaimRecord,
    MessageKey,
    account,
    handled_keys,
    read_ledgers,
)

__all__ = [
    "Cluster",
    "Producer",
    "RunnerProcess",
    "RunnerSpec",
    "SubscriptionSpec",
    "Topology",
    "Tuning",
    "Verdict",
    "wait_for",
]

JSON = {"Content-Type": "application/json"}
SUBSCRIPTIONS = "/v1/stream/__ds/subscriptions"
REQUEST_TIMEOUT = 5.0
#: Where the ledger handler lives, for ``pullwake run``.
HANDLER = "pullwake.testing.e2e.ledger:handle"


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], *, timeout: float, interval: float = 0.1
) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` passes (False)."""
    try:
        await wait_until(predicate, timeout=timeout, interval=interval)
    except TimeoutError:
        return False
    return True


# -- what to start --------------------------------------------------------------------------


@attrs.frozen
class Tuning:
    """Timeouts for the processes: small enough for tests, large enough for a loaded machine."""

    keepalive: float = 0.5
    heartbeat: float = 1.0
    read_timeout: float = 3.0
    max_backoff: float = 2.0
    lease_sweep: float = 0.5
    shutdown_grace: float = 1.0
    grace: float = 5.0

    def server_args(self) -> list[str]:
        return [
            "--keepalive",
            str(self.keepalive),
            "--shutdown-grace",
            str(self.shutdown_grace),
            "--lease-sweep-interval",
            str(self.lease_sweep),
        ]

    def runner_args(self) -> list[str]:
        return [
            "--heartbeat-interval",
            str(self.heartbeat),
            "--read-timeout",
            str(self.read_timeout),
            "--max-backoff",
            str(self.max_backoff),
            "--grace",
            str(self.grace),
        ]


@attrs.frozen
class RunnerSpec:
    id: str
    wake_stream: str
    #: The runner process's backend (default: the topology's).
    backend: str | None = None


@attrs.frozen
class Topology:
    """What a :class:`Cluster` starts."""

    database: str  # "sqlite" or "postgres"
    backend: str  # the backend of every server and runner process, unless said otherwise
    servers: int
    runners: tuple[RunnerSpec, ...]
    subscriptions: tuple[SubscriptionSpec, ...]
    #: The data streams (created before the subscriptions; glob subscriptions link them).
    streams: tuple[str, ...]
    #: Seconds each handler waits after recording its claim (the mid-handler kill window).
    hold: float = 0.0
    tuning: Tuning = attrs.field(factory=Tuning)
    #: Per server, its backend (default: ``backend`` for all).
    server_backends: tuple[str, ...] = ()

    def server_backend(self, index: int) -> str:
        if index < len(self.server_backends):
            return self.server_backends[index]
        return self.backend


# -- runner processes -----------------------------------------------------------------------


class RunnerProcess(_RunnerProcess):
    """One e2e runner: ``pullwake run`` of the ledger handler (:data:`HANDLER`)."""

    def __init__(
        self,
        spec: RunnerSpec,
        urls: Sequence[str],
        *,
        backend: str,
        workdir: Path,
        ledger: Path,
        tuning: Tuning,
        hold: float = 0.0,
    ) -> None:
        super().__init__(
            HANDLER,
            urls,
            runner_id=spec.id,
            log_dir=workdir,
            backend=backend,
            args=["--wake-stream", spec.wake_stream, *tuning.runner_args()],
            env={
                LEDGER_ENV: str(ledger),
                HOLD_ENV: str(hold),
                "PULLWAKE_E2E_RUNNER": spec.id,
            },
            cwd=workdir,
        )
        self.spec = spec
        self.ledger = ledger
        self.tuning = tuning
        self.hold = hold


# -- the producer ---------------------------------------------------------------------------


class AppendFailed(Exception):
    """An append could not be confirmed (or ruled out) before its deadline."""


class Producer:
    """Append ``{"s": stream, "n": seq}`` messages; each confirmed exactly once.

    Appends go straight to the servers, in turn. When an append gets no clear answer (a lost
    connection, a timeout, a 5xx: the append may or may not have committed), the producer reads
    the stream after the last tail it knows before it appends again, so a message is never
    appended twice and a confirmed message is never missing.
    """

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = list(urls)
        self._http = httpx.AsyncClient(timeout=REQUEST_TIMEOUT)
        self._turn = 0
        # Per server, when a request to it last failed (monotonic): avoided for a while.
        self._failed: dict[str, float] = {}
        self._seq = 0
        # Invariant: per stream, an offset at or before the next unconfirmed message (absent:
        # read from the start).
        self._tails: dict[str, str] = {}
        # Invariant: every message confirmed in its stream exactly once, with when it was
        # confirmed (wall clock); nothing unconfirmed.
        self.produced: dict[MessageKey, float] = {}
        self.retries = 0
        self._paused = False
        self._resumed = anyio.Event()
        # One append at a time per stream, so the known tail is never past an unsure message.
        self._locks: dict[str, anyio.Lock] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    def _url(self) -> str:
        """Return the next server in turn, skipping one that failed in the last 2 s."""
        for _ in range(len(self.urls)):
            self._turn += 1
            url = self.urls[self._turn % len(self.urls)]
            if self._failed.get(url, -math.inf) < time.monotonic() - 2.0:
                return url
        return self.urls[self._turn % len(self.urls)]

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def _present(self, stream: str, seq: int) -> bool | None:
        """Return whether ``seq`` is in ``stream`` after the known tail (None: cannot tell)."""
        offset = self._tails.get(stream, "-1")
        for _ in range(100):
            url = self._url()
            try:
                response = await self._http.get(
                    f"{url}/v1/stream/{stream}", params={"offset": offset}
                )
            except httpx.HTTPError:
                self._failed[url] = time.monotonic()
                return None
            if response.status_code != 200:
                self._failed[url] = time.monotonic()
                return None
            offset = response.headers["Stream-Next-Offset"]
            if any(isinstance(m, dict) and m.get("n") == seq for m in response.json()):
                # Only this producer appends to the stream, one message at a time: nothing
                # unconfirmed lies before this offset.
                self._tails[stream] = offset
                return True
            if response.headers.get("Stream-Up-To-Date", "").lower() == "true":
                return False
        return None

    async def append(
        self,
        stream: str,
        seq: int | None = None,
        *,
        via: str | None = None,
        timeout: float = 60.0,
    ) -> int:
        """Append one message to ``stream``; return its sequence number once confirmed.

        ``via`` sends the append (and its retries) to that server only.
        """
        seq = self.next_seq() if seq is None else seq
        lock = self._locks.setdefault(stream, anyio.Lock())
        async with lock:
            await self._append_locked(stream, seq, via, timeout)
        self.produced[(stream, seq)] = time.time()
        return seq

    async def _append_locked(self, stream: str, seq: int, via: str | None, timeout: float) -> None:
        body = json.dumps([{"s": stream, "n": seq}])
        deadline = time.monotonic() + timeout
        delay = 0.05
        unsure = False
        for _ in range(10_000):
            if time.monotonic() >= deadline:
                break
            if unsure:
                present = await self._present(stream, seq)
                if present:
                    return
                if present is None:
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                unsure = False
            url = via or self._url()
            try:
                response = await self._http.post(
                    f"{url}/v1/stream/{stream}", content=body, headers=JSON
                )
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code == 204:
                self._tails[stream] = response.headers["Stream-Next-Offset"]
                return
            if response is not None and response.status_code < 500:
                raise AssertionError(
                    f"append to {stream} answered {response.status_code}: {response.text}"
                )
            self.retries += 1
            self._failed[url] = time.monotonic()
            unsure = True
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.5)
        raise AppendFailed(f"append of {seq} to {stream} not confirmed in {timeout} s")

    def pause(self) -> None:
        self._paused = True
        self._resumed = anyio.Event()

    def resume(self) -> None:
        self._paused = False
        self._resumed.set()

    async def steady(
        self, streams: Sequence[str], *, interval: float, stop: anyio.Event, limit: int
    ) -> None:
        """Append to ``streams`` in turn, one every ``interval`` s, ``limit`` in all or until
        ``stop``. The pace is kept against a schedule: after an outage held appends back, the
        producer catches up rather than shifting the rest of its work later."""
        start = time.monotonic()
        for index in range(limit):
            if stop.is_set():
                return
            if self._paused:
                with anyio.move_on_after(120):
                    await self._resumed.wait()
            await self.append(streams[index % len(streams)])
            wait = start + (index + 1) * interval - time.monotonic()
            if wait > 0:
                with anyio.move_on_after(wait):
                    await stop.wait()


# -- the cluster ----------------------------------------------------------------------------


@attrs.frozen
class Verdict:
    """Everything the harness checks at the end of a run."""

    accounting: Accounting
    #: Subscriptions not at rest: a cursor behind its tail, a lease held, a wake in flight.
    stuck: tuple[str, ...]
    #: 500s (unexpected errors) in server logs.
    server_errors: tuple[str, ...]
    #: Runners that did not stop cleanly on SIGTERM at the end, or died on their own.
    runner_problems: tuple[str, ...]

    def problems(self) -> list[str]:
        found = self.accounting.problems()
        found += [f"stuck: {s}" for s in self.stuck]
        found += [f"server error: {e}" for e in self.server_errors]
        found += [f"runner: {r}" for r in self.runner_problems]
        return found


class Cluster:
    """A deployment of real processes (see the module docstring); use ``async with``."""

    def __init__(
        self,
        topology: Topology,
        workdir: Path,
        database_url: str,
        *,
        postgres: PostgresServer | None = None,
    ) -> None:
        self.topology = topology
        self.workdir = workdir
        self.database_url = database_url
        self.postgres = postgres
        self.ledger_dir = workdir / "ledger"
        # Invariant: gateways[i] forwards to servers[i] (whose port survives its restarts).
        self.servers: list[ServerProcess] = []
        self.gateways: list[FaultGateway] = []
        self.runners: dict[str, RunnerProcess] = {}
        self.producer: Producer | None = None
        self.admin: httpx.AsyncClient | None = None
        self._stack = contextlib.AsyncExitStack()
        self.tg: anyio.abc.TaskGroup | None = None

    # -- lifetime ------------------------------------------------------------------------

    async def __aenter__(self) -> Cluster:
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _start(self) -> None:
        topology = self.topology
        self.ledger_dir.mkdir(parents=True, exist_ok=True)
        args = topology.tuning.server_args()
        for index in range(topology.servers):
            server = ServerProcess(
                self.database_url,
                log_dir=self.workdir,
                backend=topology.server_backend(index),
                args=args,
                name=f"server-{index}",
            )
            self.servers.append(server)
            await anyio.to_thread.run_sync(server.start)
        self.tg = await self._stack.enter_async_context(anyio.create_task_group())
        for server in self.servers:
            assert server.port is not None, "a started server knows its port"
            gateway = FaultGateway("127.0.0.1", server.port)
            self.gateways.append(await self._stack.enter_async_context(gateway))
        self.admin = httpx.AsyncClient(timeout=REQUEST_TIMEOUT)
        self.producer = Producer([s.url for s in self.servers])
        await self._create_resources()
        urls = [g.url for g in self.gateways]
        for spec in topology.runners:
            runner = RunnerProcess(
                spec,
                urls,
                backend=spec.backend or topology.backend,
                workdir=self.workdir,
                ledger=self.ledger_dir,
                tuning=topology.tuning,
                hold=topology.hold,
            )
            self.runners[spec.id] = runner
            runner.start()

    async def _create_resources(self) -> None:
        topology = self.topology
        wake_streams = {r.wake_stream for r in topology.runners}
        wake_streams |= {s.wake_stream for s in topology.subscriptions if s.wake_stream}
        for path in sorted(wake_streams) + list(topology.streams):
            await self.request("PUT", f"/v1/stream/{path}", headers=JSON, expect=(200, 201))
        for sub in topology.subscriptions:
            await self.request(
                "PUT", f"{SUBSCRIPTIONS}/{sub.id}", json=subscription_body(sub), expect=(201,)
            )

    async def _stop(self) -> None:
        """Kill every process and close everything (also after a failure or a cancellation).

        The task group and the gateways are left by the exit stack in the scope they were
        entered in (anyio forbids leaving them inside a newer one); everything else happens
        shielded, so a cancelled test still leaves no process behind.
        """
        with anyio.CancelScope(shield=True):
            for runner in self.runners.values():
                await anyio.to_thread.run_sync(runner.close)
        if self.tg is not None:
            self.tg.cancel_scope.cancel()
        try:
            await self._stack.aclose()
        finally:
            with anyio.CancelScope(shield=True):
                for server in self.servers:
                    await anyio.to_thread.run_sync(server.close)
                if self.postgres is not None and not self.postgres.running:
                    await anyio.to_thread.run_sync(self.postgres.start)
                if self.producer is not None:
                    await self.producer.aclose()
                if self.admin is not None:
                    await self.admin.aclose()

    # -- talking to the servers ----------------------------------------------------------

    def live_servers(self) -> list[ServerProcess]:
        return [s for s in self.servers if s.running]

    async def request(
        self,
        method: str,
        path: str,
        *,
        expect: Iterable[int] = (200,),
        attempts: int = 50,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send an admin request to any live server (retrying for a while); check the status."""
        assert self.admin is not None
        wanted = tuple(expect)
        last = ""
        for attempt in range(attempts):
            servers = self.live_servers() or self.servers
            server = servers[attempt % len(servers)]
            try:
                response = await self.admin.request(method, server.url + path, **kwargs)
            except httpx.HTTPError as exc:
                last = repr(exc)
            else:
                if response.status_code in wanted:
                    return response
                last = f"{response.status_code} {response.text[:300]}"
                if response.status_code < 500:
                    break
            await anyio.sleep(0.2)
        raise AssertionError(f"{method} {path}: expected {wanted}, got {last}")

    async def subscription(self, sub_id: str) -> dict[str, Any]:
        response = await self.request("GET", f"{SUBSCRIPTIONS}/{sub_id}")
        data: dict[str, Any] = response.json()
        return data

    async def tail(self, path: str) -> str:
        response = await self.request("HEAD", f"/v1/stream/{path}")
        return response.headers["Stream-Next-Offset"]

    async def stuck_subscriptions(self) -> list[str]:
        """Describe every subscription not at rest (empty when all are)."""
        found = []
        for sub in self.topology.subscriptions:
            view = await self.subscription(sub.id)
            if view.get("holder") is not None:
                found.append(f"{sub.id}: lease held by {view['holder']}")
            if view.get("wake_id") is not None:
                found.append(f"{sub.id}: wake {view['wake_id']} in flight")
            for link in view["streams"]:
                tail = await self.tail(link["path"])
                if link["acked_offset"] != tail:
                    found.append(
                        f"{sub.id}: {link['path']} acked {link['acked_offset']}, tail {tail}"
                    )
        return found

    async def attached_server(self, runner_id: str) -> int | None:
        """Return the index of the server the runner says it uses (from its last heartbeat)."""
        try:
            response = await self.request("GET", f"/v1/runners/{runner_id}/health", attempts=3)
        except AssertionError:
            return None
        url = response.json().get("diagnostics", {}).get("server")
        for index, gateway in enumerate(self.gateways):
            if gateway.url == url:
                return index
        return None

    # -- ledgers and waiting -------------------------------------------------------------

    async def claims(self) -> list[ClaimRecord]:
        return await anyio.to_thread.run_sync(read_ledgers, self.ledger_dir)

    def killed_pids(self) -> list[int]:
        return [pid for r in self.runners.values() for pid in r.killed_pids()]

    async def stream_contents(self) -> Counter[MessageKey]:
        """Read every data stream from the start; count each message's copies."""
        found: Counter[MessageKey] = Counter()
        for path in self.topology.streams:
            offset = "-1"
            for _ in range(10_000):
                response = await self.request(
                    "GET", f"/v1/stream/{path}", params={"offset": offset}
                )
                found.update((m["s"], m["n"]) for m in response.json())
                offset = response.headers["Stream-Next-Offset"]
                if response.headers.get("Stream-Up-To-Date", "").lower() == "true":
                    break
        return found

    async def accounting(self) -> Accounting:
        assert self.producer is not None
        return account(
            self.producer.produced,
            await self.claims(),
            self.killed_pids(),
            await self.stream_contents(),
        )

    async def handled(self, keys: Iterable[MessageKey]) -> bool:
        wanted = set(keys)
        return wanted <= handled_keys(await self.claims())

    async def wait_handled(self, keys: Iterable[MessageKey], timeout: float) -> bool:
        wanted = set(keys)
        return await wait_for(lambda: self.handled(wanted), timeout=timeout, interval=0.1)

    async def wait_streaming(self, timeout: float = 30.0) -> bool:
        async def all_streaming() -> bool:
            return all(r.state() == "streaming" for r in self.runners.values() if r.running)

        return await wait_for(all_streaming, timeout=timeout)

    async def quiescent(self) -> bool:
        """True when everything produced is handled and every subscription is at rest."""
        assert self.producer is not None
        if not await self.handled(self.producer.produced):
            return False
        try:
            return not await self.stuck_subscriptions()
        except AssertionError:
            return False

    async def wait_quiescent(self, timeout: float) -> bool:
        return await wait_for(self.quiescent, timeout=timeout, interval=0.25)

    # -- the end -------------------------------------------------------------------------

    async def stop_runners(self) -> list[str]:
        """SIGTERM every runner; return what went wrong (a bad exit, not offline after)."""
        problems = []
        for runner in self.runners.values():
            was_running = runner.running
            if not was_running:
                last = runner.instances[-1] if runner.instances else None
                if last is not None and last.ended is None:
                    runner.close()
                    problems.append(
                        f"{runner.id} (pid {last.pid}) exited by itself with status "
                        f"{last.exit_status}"
                    )
                continue
            status = await anyio.to_thread.run_sync(runner.terminate)
            if status != 0:
                problems.append(f"{runner.id} exited {status} on SIGTERM")
                continue
            health = await self.request("GET", f"/v1/runners/{runner.id}/health")
            if health.json()["status"] != "offline":
                problems.append(f"{runner.id} shows {health.json()['status']} after a clean stop")
        return problems

    def server_errors(self) -> list[str]:
        found = []
        for server in self.servers:
            for line in server.stderr_text().splitlines():
                if "unexpected error" in line:
                    found.append(f"{server.name}: {line.strip()}")
        return found

    async def verdict(self, *, settle: float = 90.0) -> Verdict:
        """Wait (bounded) for quiescence, stop the runners cleanly, and judge the run."""
        await self.wait_quiescent(settle)
        accounting = await self.accounting()
        try:
            stuck = tuple(await self.stuck_subscriptions())
        except AssertionError as exc:
            stuck = (f"could not read the subscriptions: {exc}",)
        runner_problems = tuple(await self.stop_runners())
        return Verdict(accounting, stuck, tuple(self.server_errors()), runner_problems)

    def logs_tail(self, chars: int = 3000) -> str:
        """The end of every process log, for failure messages."""
        parts = []
        for server in self.servers:
            parts.append(f"--- {server.name} ---\n{server.stderr_text()[-chars:]}")
        for runner in self.runners.values():
            parts.append(f"--- runner {runner.id} ---\n{runner.log_text()[-chars:]}")
        return "\n".join(parts)
