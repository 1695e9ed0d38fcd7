"""Compare runs of the public conformance suite with the checked-in known failures.

Installing and running the suite is :mod:`pullwake.testing.conformance`; this module keeps
what belongs to our test session: ``conformance_known_failures.txt`` (one full test name a
line; it may only shrink), the verdict of a run against it, and the totals line the terminal
summary prints.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pullwake.testing.conformance import SuiteResult

KNOWN_FAILURES = Path(__file__).with_name("conformance_known_failures.txt")


def known_failures() -> set[str]:
    """Read the checked-in list: one full test name a line; ``#`` starts a comment line."""
    lines = KNOWN_FAILURES.read_text(encoding="utf-8").splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def verdict(result: SuiteResult, known: set[str]) -> list[str]:
    """Return the problems with a run, compared with the known failures (empty when exact)."""
    problems = []
    new = sorted(result.failed - known)
    if new:
        problems.append(f"{len(new)} failed, not in the known list:\n  " + "\n  ".join(new))
    fixed = sorted(known & result.passed)
    if fixed:
        problems.append(
            f"{len(fixed)} now pass: remove them from {KNOWN_FAILURES.name}:\n  "
            + "\n  ".join(fixed)
        )
    missing = sorted(known - set(result.statuses))
    if missing:
        problems.append(
            f"{len(missing)} listed but not in the suite (renamed?):\n  " + "\n  ".join(missing)
        )
    return problems


#: Totals of the runs in this session, by server label, for the terminal summary.
TOTALS = pytest.StashKey[dict[str, str]]()


def record_total(config: pytest.Config, label: str, result: SuiteResult) -> None:
    config.stash.setdefault(TOTALS, {})[label] = result.summary()


def totals_line(config: pytest.Config) -> str | None:
    """Return the session's totals side by side, or None when no run happened."""
    totals = config.stash.get(TOTALS, {})
    if not totals:
        return None
    return "conformance: " + " | ".join(f"{label} {total}" for label, total in totals.items())
