"""The SQLite dialect: one database file, WAL, a writer thread with group commit, reader threads.

Threading model: the store owns its threads and their connections. Every write goes to ONE
writer thread through a FIFO queue. The thread takes what is queued (at most
:data:`MAX_GROUP` jobs), runs them in one ``BEGIN IMMEDIATE`` transaction, each job inside its
own ``SAVEPOINT`` (a job that fails rolls back only its savepoint and gets its own error; one
that raises ``rules.CommitThenRaise`` keeps its changes and its error is raised after the
commit; a job alone in its group needs no savepoint, the whole transaction being its own),
ends the group with one ``COMMIT`` and only then completes every job: nothing is
answered before it is durable, and a failed ``COMMIT`` fails every job of the group with
``StoreUnavailable``. ``BEGIN IMMEDIATE`` takes the database's single write lock up front, so
a rule's read-then-write never interleaves with another process's writer (the rules' row-lock
hooks are no-ops here; ``busy_timeout`` still applies when several processes share the file).

Reads go to a few reader threads that share one queue; each read is a plain ``BEGIN`` that,
thanks to WAL, sees one consistent snapshot without blocking the writer. Completions reach the
event loop through ``handoff`` (one wake-up per group). Change notification is in-process
only: several processes may share the file safely, but a waiter hears only of appends made
through its own store.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

from pullwake.server.errors import Conflict, StoreError, StoreUnavailable
from pullwake.server.store import rules
from pullwake.server.store.handoff import Completion, complete
from pullwake.server.store.schema import SCHEMA_VERSION_DDL, migrations
from pullwake.server.store.transactional import Outcome, TransactionalStore

#: How long a writer waits for the write lock held by another connection or process.
BUSY_TIMEOUT_MS = 10_000
#: The most write jobs committed in one group (bounds the latency a group adds to its first job).
MAX_GROUP = 64
#: How long closing waits for the store's threads to finish the jobs already queued.
CLOSE_WAIT_S = BUSY_TIMEOUT_MS / 1000 + 5


@contextmanager
def map_store_errors() -> Iterator[None]:
    """Translate ``sqlite3`` errors into store errors (the one edge where that happens)."""
    try:
        yield
    except StoreError:
        raise
    except sqlite3.IntegrityError as exc:
        raise Conflict(
            f"SQLite refused a write that conflicts with existing data ({exc}); retry, or "
            "re-read the resource",
            code="CONFLICT",
        ) from None
    except sqlite3.Error as exc:
        raise StoreUnavailable(
            f"SQLite failed ({type(exc).__name__}: {exc}); check the database file's disk and "
            "permissions, then retry",
        ) from None


class SqliteTransaction(rules.Transaction):
    """Positions come from the ``counters`` row; the write lock makes row locks moot."""

    def next_positions(self, count: int) -> list[int]:
        row = self.fetchone(
            "UPDATE counters SET value = value + ? WHERE name = 'offset' RETURNING value", (count,)
        )
        assert row is not None
        last = int(row[0])
        return list(range(last - count + 1, last + 1))


def split_statements(script: str) -> list[str]:
    """Split a SQL script into complete statements (as SQLite itself delimits them)."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip() and not all(
        part.strip().startswith("--") or not part.strip() for part in pending.splitlines()
    ):
        raise RuntimeError(f"migration ends in an incomplete statement: {pending.strip()[:80]!r}")
    return statements


def _closed_error() -> StoreUnavailable:
    return StoreUnavailable(
        "the SQLite store is closed (the server is shutting down); retry against a running server",
        code="STORE_CLOSED",
    )


def _quiet(conn: sqlite3.Connection, sql: str) -> None:
    """Run a clean-up statement whose failure changes nothing (the caller checks the state)."""
    try:
        conn.execute(sql)
    except sqlite3.Error:
        pass


class Job:
    """One transaction body handed to a store thread, and what became of it.

    The thread sets ``outcome`` or ``error`` (never both), then completes ``completion``; the
    event loop reads them only after that.
    """

    __slots__ = ("args", "body", "completion", "error", "outcome")

    def __init__(self, body: Callable[..., Any], args: Sequence[Any]) -> None:
        self.body = body
        self.args = args
        self.completion = Completion()
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None


#: Runs one group of jobs on a connection; sets every job's outcome or error.
RunGroup = Callable[[sqlite3.Connection, list[Job]], None]


class JobThreads:
    """Threads, one connection each, that take jobs from one FIFO queue and run them in groups.

    Written by hand because no library offers "drain what is queued into one batch, then wake
    the event loop once": concurrent.futures and anyio.to_thread run one call per hand-off.
    Measured (process CPU per store call, SQLite, 300 calls x 3 rounds, two runs each): an
    append cost 123-147 µs through anyio.to_thread + lock and 84-100 µs here one at a time,
    140-143 µs against 50-55 µs with 8 callers at once (trio: 157-189 against 54-121); a read
    82-102 against 30-58 µs.
    """

    def __init__(
        self, name: str, connections: Sequence[sqlite3.Connection], run: RunGroup, max_group: int
    ) -> None:
        self._run = run
        self._max_group = max_group
        # Jobs in arrival order; one None per thread asks it to stop (after the jobs before).
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        # Invariant: once False, nothing more is queued (so the stop marks come last).
        self._accepting = True
        # Invariant: once True, the threads fail the jobs still queued instead of running them.
        self._abandoned = False
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._main, args=(conn,), name=f"{name}-{index}", daemon=True)
            for index, conn in enumerate(connections)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._accepting:
                self._queue.put(job)
                return
        raise _closed_error()

    def stop(self, deadline: float) -> None:
        """Let the threads finish what is queued until ``deadline`` (``time.monotonic``), then
        have them fail the rest with STORE_CLOSED. Blocks: call from a worker thread."""
        with self._lock:
            if self._accepting:
                self._accepting = False
                for _ in self._threads:
                    self._queue.put(None)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            self._abandoned = True

    def _wait_for_job(self) -> Job | None:
        """Block until a job (or a stop mark) is queued: the thread's one idle wait.

        A method of its own so that a profile can tell it from work: the wait is in C, where
        py-spy sees this frame as busy (``bench/breakdown.py`` drops it by name).
        """
        return self._queue.get()

    def _main(self, conn: sqlite3.Connection) -> None:
        try:
            stopping = False
            while not stopping:
                first = self._wait_for_job()
                if first is None:
                    return
                group = [first]
                while len(group) < self._max_group:
                    try:
                        job = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        stopping = True  # this thread's stop mark: end after this group
                        break
                    group.append(job)
                self._run_group(conn, group)
        finally:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def _run_group(self, conn: sqlite3.Connection, group: list[Job]) -> None:
        try:
            if self._abandoned:
                for job in group:
                    job.error = _closed_error()
            else:
                self._run(conn, group)
        except BaseException as exc:  # a bug in the group runner: still answer every caller
            for job in group:
                if job.outcome is None and job.error is None:
                    job.error = StoreUnavailable(
                        f"the SQLite store thread failed ({type(exc).__name__}: {exc}); retry"
                    )
        finally:
            complete(job.completion for job in group)


class SqliteStore(TransactionalStore):
    """A store in one SQLite file (its folder is created when missing)."""

    dialect_name = "SQLite"

    def __init__(self, path: str | os.PathLike[str], *, connections: int = 4) -> None:
        super().__init__(connections=connections)
        self.path = Path(path)
        # One connection is the writer's; the rest are the readers'.
        self._readers_count = max(1, connections - 1)
        # Invariant: both set while open (and for a moment while opening or closing).
        self._writer: JobThreads | None = None
        self._readers: JobThreads | None = None

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _open_sync(self) -> None:
        conns: list[sqlite3.Connection] = []
        try:
            with map_store_errors():
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreUnavailable(
                        f"cannot create the folder for SQLite database {str(self.path)!r}: {exc}"
                    ) from None
                conns.append(self._connect())
                mode = conns[0].execute("PRAGMA journal_mode = WAL").fetchone()
                if mode is None or str(mode[0]).lower() != "wal":
                    raise StoreUnavailable(
                        f"SQLite database {str(self.path)!r} cannot use WAL mode (got {mode}); "
                        "put it on a local file system"
                    )
                self._migrate(conns[0])
                for _ in range(self._readers_count):
                    conns.append(self._connect())
        except BaseException:
            for conn in conns:
                _quiet_close(conn)
            raise
        self._writer = JobThreads("pullwake-sqlite-writer", conns[:1], self._write_group, MAX_GROUP)
        # A reader thread takes one read at a time: grouping reads saves no COMMIT, and a
        # long read must not hold up the reads queued behind it while another thread idles.
        # Measured: reads grouped by 8 on one thread cost 24-30 µs against 34 µs with 8
        # callers, no gain with one; one reader thread instead of three saved 0-15 µs per read
        # with one caller, nothing with 8: three are kept so one long read blocks no other.
        self._readers = JobThreads("pullwake-sqlite-reader", conns[1:], self._read_group, 1)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(SCHEMA_VERSION_DDL)
            applied = {row[0] for row in conn.execute("SELECT version FROM schema_version")}
            for migration in migrations("sqlite"):
                if migration.version in applied:
                    continue
                for statement in split_statements(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, name, applied_at_ms) VALUES (?, ?, ?)",
                    (migration.version, migration.name, int(time.time() * 1000)),
                )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _close_sync(self) -> None:
        deadline = time.monotonic() + CLOSE_WAIT_S
        # Writes first: reads queued meanwhile still see what the last group committed.
        for threads in (self._writer, self._readers):
            if threads is not None:
                threads.stop(deadline)

    async def _run(self, body: Callable[..., Any], args: Sequence[Any], write: bool) -> Outcome:
        threads = self._writer if write else self._readers
        if threads is None:
            raise _closed_error()
        job = Job(body, args)
        threads.submit(job)
        # Shielded like the default path: the job runs whatever happens to the caller, and a
        # committed change must still reach the change board; _call delivers a cancellation
        # right after.
        with anyio.CancelScope(shield=True):
            await job.completion.wait()
            if job.outcome is not None:
                self._changes.notify(job.outcome.changed)
        if job.error is not None:
            raise job.error
        assert job.outcome is not None  # the thread sets one of the two before completing
        return job.outcome

    # -- the store threads ----------------------------------------------------------------------

    def _commit_group(self, conn: sqlite3.Connection) -> None:
        """End a group's transaction (a seam: tests make it fail)."""
        conn.execute("COMMIT")

    def _write_group(self, conn: sqlite3.Connection, jobs: list[Job]) -> None:
        """Writer thread: run ``jobs`` in one transaction, one savepoint each (none for a job
        alone), one COMMIT."""
        # Jobs whose savepoint was released, with what they will answer once committed.
        done: list[tuple[Job, Outcome]] = []
        # A job alone in its group needs no savepoint: if it fails, rolling back the whole
        # transaction undoes exactly its work. That is two statements fewer per write when
        # writes come one at a time (6 of the 40 statements of an unloaded wake cycle).
        alone = len(jobs) == 1
        for index, job in enumerate(jobs):
            if not conn.in_transaction:
                try:
                    with map_store_errors():
                        conn.execute("BEGIN IMMEDIATE")
                except StoreError as exc:
                    # The write lock stayed out of reach for busy_timeout: the rest would only
                    # wait as long again.
                    for rest in jobs[index:]:
                        rest.error = StoreUnavailable(exc.message, code=exc.code)
                    break
            tx = SqliteTransaction(conn.cursor())
            try:
                with map_store_errors():
                    if not alone:
                        conn.execute("SAVEPOINT job")
                    try:
                        value = job.body(tx, *job.args)
                    except rules.CommitThenRaise as deferred:
                        if not alone:
                            conn.execute("RELEASE job")
                        done.append((job, Outcome(None, dict(tx.changed), deferred.error)))
                        continue
                    if not alone:
                        conn.execute("RELEASE job")
                done.append((job, Outcome(value, dict(tx.changed))))
            except BaseException as exc:
                job.error = exc
                if alone:
                    _quiet(conn, "ROLLBACK")
                elif conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK TO job")
                        conn.execute("RELEASE job")
                    except sqlite3.Error:
                        _quiet(conn, "ROLLBACK")
                if not conn.in_transaction:
                    # SQLite ended the whole transaction (disk full, I/O error): the jobs
                    # before this one lost their work too.
                    for earlier, _ in done:
                        earlier.error = StoreUnavailable(
                            "SQLite rolled back a group of writes after an error in another "
                            f"write ({type(exc).__name__}: {exc}); retry"
                        )
                    done = []
        if not conn.in_transaction:
            return
        try:
            with map_store_errors():
                self._commit_group(conn)
        except StoreError as exc:
            if conn.in_transaction:
                _quiet(conn, "ROLLBACK")
            for job, _ in done:
                job.error = StoreUnavailable(
                    f"SQLite could not commit ({exc.message}); nothing of this write was "
                    "saved: retry"
                )
            return
        for job, outcome in done:
            job.outcome = outcome

    def _read_group(self, conn: sqlite3.Connection, jobs: list[Job]) -> None:
        """Reader thread: each job in its own read transaction (one WAL snapshot)."""
        for job in jobs:
            tx = SqliteTransaction(conn.cursor())
            try:
                with map_store_errors():
                    conn.execute("BEGIN")
                    try:
                        value = job.body(tx, *job.args)
                    except rules.CommitThenRaise as deferred:
                        conn.execute("COMMIT")
                        job.outcome = Outcome(None, dict(tx.changed), deferred.error)
                        continue
                    conn.execute("COMMIT")
                job.outcome = Outcome(value, dict(tx.changed))
            except BaseException as exc:
                job.error = exc
            finally:
                if conn.in_transaction:
                    _quiet(conn, "ROLLBACK")


def _quiet_close(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    except sqlite3.Error:
        pass
