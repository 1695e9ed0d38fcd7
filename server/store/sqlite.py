"""The SQLite dialect: one database file, a few connections, WAL, worker threads.

Transactions that write start with ``BEGIN IMMEDIATE``, which takes the database's single
write lock up front, so a rule's read-then-write can never interleave with another writer (the
rules' row-lock hooks are no-ops here). Reads start with a plain ``BEGIN`` and, thanks to WAL,
see one consistent snapshot without blocking writers. Change notification is in-process only:
several processes may share the file safely, but a waiter hears only of appends made through
its own store.
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

from pullwake.server.errors import Conflict, StoreError, StoreUnavailable
from pullwake.server.store import rules
from pullwake.server.store.schema import SCHEMA_VERSION_DDL, migrations
from pullwake.server.store.transactional import Outcome, TransactionalStore, run_body

#: How long a writer waits for the write lock held by another connection or process.
BUSY_TIMEOUT_MS = 10_000


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


class SqliteStore(TransactionalStore):
    """A store in one SQLite file (its folder is created when missing)."""

    dialect_name = "SQLite"
    # Measured (docs/performance.md): with writers meeting in BEGIN IMMEDIATE, a fifth of the
    # server's time went to SQLite's busy handler, which sleeps 1, 2, 5, ... ms between tries.
    single_writer = True

    def __init__(self, path: str | os.PathLike[str], *, connections: int = 4) -> None:
        super().__init__(connections=connections)
        self.path = Path(path)
        self._size = connections
        # Invariant: holds every open connection not lent to a worker thread right now.
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        # Invariant: once True, a connection coming back from a worker is closed, not kept.
        self._closing = False
        self._pool_lock = threading.Lock()

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
        with self._pool_lock:
            self._closing = False
        with map_store_errors():
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailable(
                    f"cannot create the folder for SQLite database {str(self.path)!r}: {exc}"
                ) from None
            first = self._connect()
            mode = first.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise StoreUnavailable(
                    f"SQLite database {str(self.path)!r} cannot use WAL mode (got {mode}); put "
                    "it on a local file system"
                )
            try:
                self._migrate(first)
            finally:
                self._give_back(first)
            for _ in range(self._size - 1):
                self._give_back(self._connect())

    def _give_back(self, conn: sqlite3.Connection) -> None:
        with self._pool_lock:
            if not self._closing:
                self._idle.put(conn)
                return
        conn.close()

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
        with self._pool_lock:
            self._closing = True
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                break
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def _transact_sync(self, body: Callable[..., Any], args: Sequence[Any], write: bool) -> Outcome:
        with map_store_errors():
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                raise StoreUnavailable(
                    "the SQLite store has no open connection (it is closing); retry later",
                    code="STORE_CLOSED",
                ) from None
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")

                def commit() -> None:
                    conn.execute("COMMIT")

                def rollback() -> None:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass

                return run_body(
                    SqliteTransaction(conn.cursor()), body, args, commit=commit, rollback=rollback
                )
            finally:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                self._give_back(conn)
