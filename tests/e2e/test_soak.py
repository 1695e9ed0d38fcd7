"""A short chaos soak on SQLite and on PostgreSQL: random faults, four runners, nothing lost.

:mod:`tests.e2e.chaos` runs the deployment (two runners racing on a shared wake stream, two on
their own; on PostgreSQL two server replicas) for about a minute while a seeded controller
injects faults of the matrix one after another. The seed is fixed, so the sequence of faults is
the same on every run (seed 12 gives seven kinds of fault on SQLite and eight on PostgreSQL,
runner kills and a PostgreSQL restart among them); only the machine's timing varies.

``make soak DURATION=600 SEED=...`` runs the same soak for longer (see docs/reliability.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pullwake.testing import PostgresServer
from pullwake.testing.e2e.chaos import run_soak

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

SEED = 12
SECONDS = 60.0
MESSAGES = 600


@pytest.mark.timeout(420)
@pytest.mark.parametrize(
    ("database", "anyio_backend"),
    [
        pytest.param("sqlite", "asyncio", id="sqlite-asyncio"),
        pytest.param("postgres", "trio", id="postgres-trio", marks=pytest.mark.postgres),
    ],
)
async def test_a_minute_of_chaos_loses_nothing_and_leaves_nothing_stuck(
    database: str, anyio_backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    postgres: PostgresServer | None = None
    if database == "postgres":
        database_url = request.getfixturevalue("postgres_dsn")
        postgres = request.getfixturevalue("postgres_server")
    else:
        database_url = f"sqlite:///{tmp_path / 'pullwake.db'}"
    result = await run_soak(
        database=database,
        backend=anyio_backend,
        database_url=database_url,
        workdir=tmp_path,
        duration=SECONDS,
        messages=MESSAGES,
        seed=SEED,
        postgres=postgres,
    )
    summary = result.summary()
    assert not result.problems, f"{summary}\n{result.logs}"
    assert result.produced == MESSAGES
    assert result.handled == MESSAGES
    assert result.lost == 0
    # Every duplicate is explained by a SIGKILL of the runner that recorded it first.
    assert result.duplicates == result.explained
    # The chaos did happen: several kinds of fault, runner kills among them.
    kinds = set(summary["faults"])
    assert len(kinds) >= 4, summary
    assert "runner-sigkill" in kinds, summary
