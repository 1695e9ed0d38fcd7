"""Versioned migrations: the SQL files shipped in ``migrations/<dialect>/NNNN_name.sql``.

Each dialect applies, at ``open()``, every migration whose version is not yet recorded in the
``schema_version`` table, each in its own transaction together with its record, so applying
twice is a no-op and a crash mid-migration leaves the previous version intact.

Versions start at 1 and only grow, but may skip numbers: features developed side by side
reserve their numbers (0002 producers, 0003 stream lifecycle), and either may land first.
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
    if not versions or versions[0] != 1 or len(set(versions)) != len(versions):
        raise RuntimeError(
            f"{dialect} migrations must start at 0001 and use each number once; found {versions}"
        )
    return tuple(found)
