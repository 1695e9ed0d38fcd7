"""A throwaway PostgreSQL cluster: ``initdb`` into a temporary folder, started on a free port.

:func:`throwaway_postgres` is the usual entry: it finds the server programs (``initdb`` and
``pg_ctl`` on ``PATH``, else the newest ``/usr/lib/postgresql/*/bin``), runs ``initdb`` (as
the ``postgres`` user when the caller is root, since initdb refuses root), starts the cluster
on a free 127.0.0.1 port with its unix socket in that folder and durability switched off for
speed, and at exit stops it (``immediate``) and removes the folder, whatever happened.
:class:`PostgresServer` is the cluster itself: start, stop (smart, fast or immediate, as
``pg_ctl -m``), restart on the same port and data, create and drop databases.

Every call blocks (``pg_ctl -w`` waits up to 30 s; each program gets 60 s).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql

from .errors import LaunchError, ToolMissing
from .processes import free_port

__all__ = ["SUPERUSER", "PostgresServer", "find_bindir", "throwaway_postgres"]

#: The cluster's superuser (trust authentication on 127.0.0.1 only).
SUPERUSER = "postgres"

_NOT_INSTALLED = (
    "PostgreSQL is not installed (no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin): "
    "run `make postgres-tools` or `apt-get install postgresql`"
)


def find_bindir() -> Path | None:
    """Locate the folder holding ``initdb`` and ``pg_ctl`` (PATH first, then Debian's)."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent

    def version(path: str) -> int:
        name = Path(path).parent.parent.name
        return int(name) if name.isdigit() else 0

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    return Path(candidates[-1]).parent if candidates else None


class PostgresServer:
    """One PostgreSQL cluster in ``root``; :meth:`init` once, then start/stop/restart it."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir = bindir
        self.root = root
        self.datadir = root / "data"
        self.sockdir = root / "sock"
        self.logfile = root / "postgres.log"
        self.port = free_port()
        # Invariant: True between a successful start() and the next stop().
        self.running = False
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SUPERUSER)
            except KeyError:
                raise ToolMissing(
                    "running as root, but there is no 'postgres' user to run PostgreSQL as; "
                    "the Debian postgresql package creates it (`make postgres-tools`)"
                ) from None
            self._as_user = ["runuser", "-u", SUPERUSER, "--"]

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as_user, *args], check=False, capture_output=True, text=True, timeout=60
        )

    @property
    def admin_dsn(self) -> str:
        """The DSN of the ``postgres`` maintenance database."""
        return self.dsn_for("postgres")

    @property
    def dsn(self) -> str:
        """The DSN of the database ``pullwake`` (create it first with :meth:`create_database`)."""
        return self.dsn_for("pullwake")

    def dsn_for(self, dbname: str) -> str:
        """Return the DSN of database ``dbname`` on this cluster."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def init(self) -> None:
        """Create the cluster's data folder with ``initdb``."""
        self.sockdir.mkdir(exist_ok=True)
        if self._as_user:
            shutil.chown(self.root, SUPERUSER)
            shutil.chown(self.sockdir, SUPERUSER)
        result = self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        if result.returncode != 0:
            raise LaunchError(f"initdb failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> None:
        """Start the cluster on :attr:`port` and wait until it accepts connections."""
        options = " ".join(
            [
                f"-p {self.port}",
                f"-k {self.sockdir}",
                "-c listen_addresses=127.0.0.1",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
            ]
        )
        result = self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-o",
            options,
            "-w",
            "-t",
            "30",
            "start",
        )
        if result.returncode != 0:
            log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
            raise LaunchError(f"pg_ctl start failed:\n{result.stdout}\n{result.stderr}\n{log}")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (``mode``: smart, fast or immediate, as ``pg_ctl -m``)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop")
        self.running = False

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again on the same port with the same data."""
        self.stop(mode)
        self.start()

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its DSN."""
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            # FILE_COPY (PostgreSQL 15+) is the faster way to copy a tiny template.
            if conn.info.server_version >= 150000:
                query = sql.SQL("CREATE DATABASE {} STRATEGY FILE_COPY")
            else:
                query = sql.SQL("CREATE DATABASE {}")
            conn.execute(query.format(sql.Identifier(name)))
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` (closing its connections) if it exists."""
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(query.format(sql.Identifier(name)))


@contextlib.contextmanager
def throwaway_postgres(prefix: str = "pullwake-pg-") -> Iterator[PostgresServer]:
    """Run a fresh cluster in a temporary folder; stop it and remove the folder at exit.

    Raises :class:`~pullwake.testing.errors.ToolMissing` when PostgreSQL is not installed.
    """
    bindir = find_bindir()
    if bindir is None:
        raise ToolMissing(_NOT_INSTALLED)
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        server = PostgresServer(bindir, root)
        try:
            server.init()
            for attempt in range(3):
                try:
                    server.start()
                    break
                except LaunchError:
                    # Most often the free port was taken in the meantime: try another.
                    if attempt == 2:
                        raise
                    server.port = free_port()
            yield server
        finally:
            with contextlib.suppress(Exception):
                server.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)
