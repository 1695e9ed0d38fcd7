"""Stores: one Protocol (``base.Store``), SQLite and PostgreSQL implementations.

Pick one by URL with :func:`open_store`::

    store = open_store("sqlite:///.pullwake/pullwake.db")   # relative to the working folder
    store = open_store("sqlite:////var/lib/pullwake/pw.db")  # absolute (four slashes)
    store = open_store("postgresql://user:pw@127.0.0.1:5432/pullwake")
    await store.open()
    ...
    await store.aclose()
"""

from __future__ import annotations

from pullwake.server.store.base import NOW_OFFSET, START_OFFSET, Store
from pullwake.server.store.offsets import OFFSET_WIDTH, ZERO_OFFSET

#: The server's database when none is configured (its folder is created on open).
DEFAULT_DATABASE_URL = "sqlite:///.pullwake/pullwake.db"

__all__ = [
    "DEFAULT_DATABASE_URL",
    "NOW_OFFSET",
    "OFFSET_WIDTH",
    "START_OFFSET",
    "ZERO_OFFSET",
    "Store",
    "open_store",
]


def open_store(url: str, *, database_clock: bool = False) -> Store:
    """Make the store a database URL names; the caller then awaits ``store.open()``.

    ``database_clock``: on PostgreSQL, judge time (leases) by the database's clock instead of
    the ``now_ms`` callers pass, so every replica judges by one clock (the server sets it;
    SQLite has one process, and ignores it).

    ``sqlite:///relative/file.db`` or ``sqlite:////absolute/file.db`` (the SQLAlchemy
    convention), ``postgresql://...`` or ``postgres://...`` (any libpq connection URL).
    Raises ``ValueError`` for anything else.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(
            f"database URL {url!r} is not a URL: use 'sqlite:///path/to/file.db' or "
            "'postgresql://user@host/dbname'"
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sqlite":
        prefix = "sqlite:///"
        if not url.lower().startswith(prefix) or len(url) == len(prefix):
            raise ValueError(
                f"SQLite URL {url!r} must be 'sqlite:///relative/path.db' or "
                "'sqlite:////absolute/path.db' (no host part)"
            )
        path = url[len(prefix) :]
        if "?" in path or "#" in path or path.endswith("/") or path == ":memory:":
            raise ValueError(
                f"SQLite URL {url!r} must name a database file (no query string, no folder, no "
                "':memory:': the store shares one file between its connections)"
            )
        from pullwake.server.store.sqlite import SqliteStore

        return SqliteStore(path)
    if scheme in ("postgresql", "postgres"):
        import psycopg.conninfo

        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise ValueError(
                f"PostgreSQL URL is malformed ({str(exc).strip()}): use "
                "'postgresql://user:password@host:port/dbname'"
            ) from None
        from pullwake.server.store.postgres import PostgresStore

        return PostgresStore(url, database_clock=database_clock)
    raise ValueError(
        f"database URL scheme {scheme!r} is not supported: use 'sqlite:///path/to/file.db' or "
        "'postgresql://user@host/dbname'"
    )
