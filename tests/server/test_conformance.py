"""The public Durable Streams conformance suite against pullwake (SQLite and PostgreSQL) and the
reference server, in one session, with the totals printed side by side at the end.

pullwake's run fails on any failed test not listed in ``conformance_known_failures.txt``, and
on any listed test that now passes (the list is kept exact, and may only shrink). The reference
server's run only records its total: it is the yardstick, not the subject.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.servers import ReferenceServer, ServerFactory
from tests.server.conformance import (
    INSTALL_TIMEOUT,
    RUN_TIMEOUT,
    known_failures,
    record_total,
    run_suite,
    verdict,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(INSTALL_TIMEOUT + RUN_TIMEOUT + 60)]


def test_pullwake_conformance(
    request: pytest.FixtureRequest,
    server_factory: ServerFactory,
    database_url: str,
    tmp_path: Path,
) -> None:
    server = server_factory(database_url, args=["--long-poll-timeout", "2"])
    label = "pullwake " + database_url.split(":", 1)[0].replace("postgresql", "postgres")
    result = run_suite(server.url, tmp_path)
    record_total(request.config, label, result)
    print(f"\n{label}: {result.summary()}")
    problems = verdict(result, known_failures())
    assert not problems, f"conformance suite on {label}:\n" + "\n".join(problems)


def test_reference_conformance(
    request: pytest.FixtureRequest, reference_server: ReferenceServer, tmp_path: Path
) -> None:
    result = run_suite(reference_server.url, tmp_path)
    record_total(request.config, "reference @durable-streams/server", result)
    print(f"\nreference server: {result.summary()}")
    for name in sorted(result.failed):
        print(f"  reference fails: {name}")
    assert result.passed, "the reference server passed no conformance test: is the suite sound?"
