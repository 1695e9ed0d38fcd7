"""Versioned migrations: the SQL files shipped in ``migrations/<dialect>/NNNN_name.sql``.

Each dialect applies, at ``open()``, every migration whose version is not yet recorded in the
``schema_version`` table, each in its own transaction together with its record, so applying
twice is a no-op and a crash mid-migration leaves the previous version intact.

Versions need not be contiguous (tracks of work number their migrations ahead of merging, so
``0001`` and ``0003`` may ship before ``0002``): each migration applies on its own, and a
database that has a later one still gets an earlier one it lacks. So a migration must never
depend on another with a number it does not know to be applied before it.
"""

from __future__ import annotations

import importlib.resources

import attrs

SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at_ms BIGINT NOT NULL)"
)


@attrs.frozen
class Migration:
    version: int
    name: str
    sql: str


def migrations(dialect: str) -> tuple[Migration, ...]:
    """Load the migrations of ``dialect`` ("sqlite" or "postgres") in version order."""
    folder = importlib.resources.files("pullwake.server.store").joinpath("migrations", dialect)
    found = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        number, _, _ = entry.name.partition("_")
        if not number.isdigit():
            raise RuntimeError(f"migration {entry.name!r} must be named NNNN_description.sql")
        found.append(Migration(int(number), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if len(set(versions)) != len(versions) or any(version < 1 for version in versions):
        raise RuntimeError(
            f"{dialect} migrations must have distinct positive numbers; found {versions}"
        )
    return tuple(found)
