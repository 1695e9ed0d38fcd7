"""Start the servers the benchmarks compare, reusing the test suite's process fixtures.

- ``pullwake server`` on SQLite or PostgreSQL: :class:`tests.fixtures.servers.ServerProcess`
  (a ``python -m pullwake server --port 0`` subprocess, started when its listening line shows).
- a throwaway PostgreSQL cluster: :class:`tests.fixtures.postgres.PostgresServer` (``initdb``
  into a temporary folder, as the ``postgres`` user when run as root; fsync off, as in tests).
- the Durable Streams reference server (npm ``@durable-streams/server@0.3.7``, in memory),
  installed into ``.venv/node`` on first use and started by ``tests/fixtures/reference_server.mjs``.

:func:`target` starts the server of a name ("sqlite", "postgres", "reference"); scripts start
one at a time, so only the server being measured runs. Everything started here is stopped on
exit.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.fixtures.postgres import PostgresServer, _free_port, find_bindir  # noqa: E402
from tests.fixtures.servers import (  # noqa: E402
    REFERENCE_PACKAGE,
    REFERENCE_PREFIX,
    START_TIMEOUT,
    ServerProcess,
    _read_line_until,
    reference_package_entry,
)

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
    bindir = find_bindir()
    if bindir is None:
        raise SystemExit(
            "PostgreSQL is not installed (no initdb/pg_ctl): run `make postgres-tools` or "
            "`apt-get install postgresql`"
        )
    with workdir("pullwake-bench-pg-") as root:
        server = PostgresServer(bindir, root)
        try:
            server.init()
            for attempt in range(3):
                try:
                    server.start()
                    break
                except RuntimeError:
                    if attempt == 2:
                        raise
                    server.port = _free_port()
            yield server
        finally:
            with contextlib.suppress(Exception):
                server.stop("immediate")


@attrs.define
class ReferenceProcess:
    proc: subprocess.Popen[str]
    url: str

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextlib.contextmanager
def reference_server() -> Iterator[ReferenceProcess]:
    """Run the Durable Streams reference server (npm) on 127.0.0.1."""
    entry = reference_package_entry()
    script = REPO_ROOT / "tests" / "fixtures" / "reference_server.mjs"
    proc = subprocess.Popen(
        ["node", str(script), str(entry)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=entry.parents[4],
    )
    try:
        url = _read_line_until(proc, REFERENCE_PREFIX, time.monotonic() + START_TIMEOUT)
        yield ReferenceProcess(proc, url)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def reference_version() -> str:
    """Return the installed reference server's version (installing it if needed)."""
    entry = reference_package_entry()
    import json

    package = json.loads((entry.parents[1] / "package.json").read_text())
    return f"{package['name']}@{package['version']}"


@contextlib.contextmanager
def target(name: str, *, server_args: Sequence[str] = ()) -> Iterator[Target]:
    """Start the server called ``name`` ("sqlite", "postgres" or "reference")."""
    if name == "sqlite":
        with pullwake_server(args=server_args) as server:
            yield Target(name, server.url, server.pid, server)
    elif name == "postgres":
        with postgres_cluster() as cluster:
            dsn = cluster.create_database(f"bench_{os.getpid()}")
            with pullwake_server(dsn, args=server_args) as server:
                yield Target(name, server.url, server.pid, server)
    elif name == "reference":
        with reference_server() as ref:
            yield Target(name, ref.url, ref.pid)
    else:
        raise ValueError(f"unknown server {name!r}; choose from {', '.join(NAMES)}")
