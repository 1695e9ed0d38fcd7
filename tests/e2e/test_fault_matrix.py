"""The fault matrix at small scale: every fault, on SQLite and on PostgreSQL, loses nothing.

Each case starts a fresh deployment of real processes (:mod:`tests.e2e.faults`), injects one
fault while a producer appends, clears it, and asserts the invariants users care about: no
message lost, no handler completion duplicated unless the runner was killed mid-handler (and
then each duplicate is explained by that kill), and no subscription left stuck (every cursor at
its tail, no lease held, no wake in flight); the runners then stop cleanly on SIGTERM. Times
are measured but never asserted (``make faults`` prints them).

Backends: every server and runner process of a case runs on the test's anyio backend. To keep
the suite inside its budget each fault runs twice, not four times: SQLite on asyncio and
PostgreSQL on trio, so every fault meets both databases and both backends.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pullwake.testing import PostgresServer
from pullwake.testing.e2e.faults import FAULTS, Fault, RunnerKillMidHandler, check, run_case

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

PAIRS = [
    pytest.param("sqlite", "asyncio", id="sqlite-asyncio"),
    pytest.param("postgres", "trio", id="postgres-trio", marks=pytest.mark.postgres),
]
CASES = [
    pytest.param(fault, database, backend, id=f"{fault.name}-{pair.id}", marks=pair.marks)
    for fault in FAULTS
    for pair in PAIRS
    for database, backend in [pair.values]
    if database == "postgres" or not fault.postgres_only
]


@pytest.mark.timeout(150)
@pytest.mark.parametrize(("fault", "database", "anyio_backend"), CASES)
async def test_nothing_is_lost_and_nothing_stays_stuck(
    fault: Fault,
    database: str,
    anyio_backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    postgres: PostgresServer | None = None
    if database == "postgres":
        database_url = request.getfixturevalue("postgres_dsn")
        postgres = request.getfixturevalue("postgres_server")
    else:
        database_url = f"sqlite:///{tmp_path / 'pullwake.db'}"
    result = await run_case(
        fault,
        database=database,
        backend=anyio_backend,
        database_url=database_url,
        workdir=tmp_path,
        postgres=postgres,
    )
    problems = check(result, fault)
    assert not problems, "\n".join(problems) + "\n" + result.logs
    assert result.lost == 0
    assert result.produced > 0
    if fault.name == RunnerKillMidHandler.name:
        assert result.duplicates == result.explained
    else:
        assert result.duplicates == 0
