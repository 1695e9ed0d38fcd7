"""Start the servers the benchmarks compare, with the launchers of :mod:`pullwake.testing`.

- ``pullwake server`` on SQLite or PostgreSQL: :class:`pullwake.testing.ServerProcess`
  (a ``python -m pullwake server --port 0`` subprocess, started when its listening line shows).
- a throwaway PostgreSQL cluster: :func:`pullwake.testing.throwaway_postgres` (``initdb``
  into a temporary folder, as the ``postgres`` user when run as root; fsync off, as in tests).
- the Durable Streams reference server (npm ``@durable-streams/server@0.3.7``, in memory):
  :class:`pullwake.testing.ReferenceServer`, installed into ``.venv/node`` on first use.

:func:`target` starts the server of a name ("sqlite", "postgres", "reference"); scripts start
one at a time, so only the server being measured runs. Everything started here is stopped on
exit.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

from pullwake.testing import (
    REFERENCE_PACKAGE,
    PostgresServer,
    ReferenceServer,
    ServerProcess,
    ToolMissing,
    throwaway_postgres,
)
from pullwake.testing.reference import installed_version

REPO_ROOT = Path(__file__).resolve().parents[1]

__all__ = [
    "NAMES",
    "REFERENCE_PACKAGE",
    "REPO_ROOT",
    "Target",
    "postgres_cluster",
    "pullwake_server",
    "raise_fd_limit",
    "reference_server",
    "target",
]

#: The servers compared side by side, in table order.
NAMES = ("sqlite", "postgres", "reference")
TITLES = {
    "sqlite": "pullwake (SQLite)",
    "postgres": "pullwake (PostgreSQL)",
    "reference": "reference (Node, memory)",
}


@attrs.define
class Target:
    """A started server: its name, base URL and process id (for RSS and CPU readings)."""

    name: str
    url: str
    pid: int
    #: The pullwake server process (None for the reference server).
    process: ServerProcess | None = None
    #: The postmaster of the throwaway PostgreSQL cluster (None unless on PostgreSQL).
    postgres_pid: int | None = None


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def pullwake_server(
    database_url: str | None = None, *, args: Sequence[str] = (), name: str = "server"
) -> Iterator[ServerProcess]:
    """Run ``pullwake server`` (a fresh SQLite file unless ``database_url`` is given)."""
    with workdir("pullwake-bench-") as tmp:
        url = database_url or f"sqlite:///{tmp / 'bench.db'}"
        server = ServerProcess(url, log_dir=tmp, args=list(args), name=name)
        try:
            server.start()
            yield server
        finally:
            server.close()


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PostgresServer]:
    """Run a throwaway PostgreSQL cluster (durability off, like the tests' cluster)."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(throwaway_postgres(prefix="pullwake-bench-pg-"))
        except ToolMissing as exc:
            raise SystemExit(str(exc)) from None
        yield server


@contextlib.contextmanager
def reference_server() -> Iterator[ReferenceServer]:
    """Run the Durable Streams reference server (npm) on 127.0.0.1."""
    with ReferenceServer() as server:
        yield server


def reference_version() -> str:
    """Return the installed reference server's version (installing it if needed)."""
    return installed_version()


def postmaster_pid(cluster: PostgresServer) -> int:
    """Return the postmaster's process id (the first line of ``postmaster.pid``)."""
    return int((cluster.datadir / "postmaster.pid").read_text().split()[0])


@contextlib.contextmanager
def target(
    name: str, *, server_args: Sequence[str] = (), backend: str = "asyncio"
) -> Iterator[Target]:
    """Start the server called ``name`` ("sqlite", "postgres" or "reference").

    ``backend`` is the pullwake server's (``--backend``: on trio it serves with hypercorn);
    the reference server ignores it.
    """
    args = ["--backend", backend, *server_args]
    if name == "sqlite":
        with pullwake_server(args=args) as server:
            yield Target(name, server.url, server.pid, server)
    elif name == "postgres":
        with postgres_cluster() as cluster:
            dsn = cluster.create_database(f"bench_{os.getpid()}")
            with pullwake_server(dsn, args=args) as server:
                yield Target(name, server.url, server.pid, server, postmaster_pid(cluster))
    elif name == "reference":
        with reference_server() as ref:
            yield Target(name, ref.url, ref.pid)
    else:
        raise ValueError(f"unknown server {name!r}; choose from {', '.join(NAMES)}")
