"""The public Durable Streams conformance suite against pullwake (SQLite and PostgreSQL) and the
reference server, in one session, with the totals printed side by side at the end.

pullwake's run fails on any failed test not listed in ``conformance_known_failures.txt``, and
on any listed test that now passes (the list is kept exact, and may only shrink). The reference
server's run only records its total: it is the yardstick, not the subject. The last two tests
check the comparison itself and the list's shape, without Node.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pullwake.testing.conformance import INSTALL_TIMEOUT, RUN_TIMEOUT, parse_report, run_suite
from tests.fixtures.servers import ReferenceServer, ServerFactory
from tests.server.conformance import KNOWN_FAILURES, known_failures, record_total, verdict

#: The install (first use only) and one run of the suite, with room for the server's start.
SUITE_TIMEOUT = INSTALL_TIMEOUT + RUN_TIMEOUT + 60


@pytest.mark.interop
@pytest.mark.timeout(SUITE_TIMEOUT)
def test_pullwake_conformance(
    request: pytest.FixtureRequest,
    record_property: Callable[[str, object], None],
    server_factory: ServerFactory,
    database_url: str,
    tmp_path: Path,
) -> None:
    server = server_factory(database_url, args=["--long-poll-timeout", "2"])
    label = "pullwake " + database_url.split(":", 1)[0].replace("postgresql", "postgres")
    result = run_suite(server.url, tmp_path)
    record_total(request.config, label, result)
    record_property("conformance", result.summary())
    print(f"\n{label}: {result.summary()}")
    problems = verdict(result, known_failures())
    assert not problems, f"conformance suite on {label}:\n" + "\n".join(problems)


@pytest.mark.interop
@pytest.mark.timeout(SUITE_TIMEOUT)
def test_reference_conformance(
    request: pytest.FixtureRequest,
    record_property: Callable[[str, object], None],
    reference_server: ReferenceServer,
    tmp_path: Path,
) -> None:
    result = run_suite(reference_server.url, tmp_path)
    record_total(request.config, "reference @durable-streams/server", result)
    record_property("conformance", result.summary())
    print(f"\nreference server: {result.summary()}")
    for name in sorted(result.failed):
        print(f"  reference fails: {name}")
    assert result.passed, "the reference server passed no conformance test: is the suite sound?"


def test_the_verdict_names_new_failures_fixes_and_stale_names() -> None:
    """The comparison with the known list, without Node: every kind of drift is named."""
    report = {
        "testResults": [
            {
                "assertionResults": [
                    {"fullName": "A passes", "status": "passed"},
                    {"fullName": "B fails, known", "status": "failed"},
                    {"fullName": "C fails, new", "status": "failed"},
                    {"fullName": "D was known, passes", "status": "passed"},
                    {"fullName": "E skipped", "status": "skipped"},
                ]
            }
        ]
    }
    result = parse_report(report)
    assert result.summary() == "2/5 (2 failed, 1 skipped)"
    assert verdict(result, {"B fails, known", "D was known, passes", "F renamed"}) == [
        "1 failed, not in the known list:\n  C fails, new",
        "1 now pass: remove them from conformance_known_failures.txt:\n  D was known, passes",
        "1 listed but not in the suite (renamed?):\n  F renamed",
    ]
    assert verdict(result, {"B fails, known", "C fails, new"}) == []
    with pytest.raises(AssertionError):
        parse_report({"testResults": []})


def test_the_known_failures_file_is_well_formed() -> None:
    lines = KNOWN_FAILURES.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("#")
    assert any("only shrink" in line for line in lines if line.startswith("#"))
    names = [line for line in lines if line and not line.startswith("#")]
    assert len(names) == len(set(names)), "a test is listed twice"
    assert all(name == name.strip() for name in names)
