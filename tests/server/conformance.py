"""Run the public Durable Streams conformance suite against a server and read its verdict.

The suite is the npm package ``@durable-streams/server-conformance-tests`` (vitest tests that
speak HTTP to ``CONFORMANCE_TEST_URL``). It is installed on first use into the same cache
folder as the reference server (``tests.fixtures.servers.NODE_PREFIX``, outside git), together
with the vitest it runs under, and run with vitest's JSON reporter, so every test's full name
and status can be compared with ``conformance_known_failures.txt``.

Every step is bounded: the install by :data:`INSTALL_TIMEOUT`, one run by :data:`RUN_TIMEOUT`
(the whole suite takes about 90 s on a quiet machine); a run that overstays is killed with its
process group.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

import attrs
import pytest

from tests.fixtures.servers import NODE_PREFIX

SUITE_VERSION = "0.3.6"
SUITE_PACKAGE = f"@durable-streams/server-conformance-tests@{SUITE_VERSION}"
VITEST_PACKAGE = "vitest@4.1.12"
INSTALL_TIMEOUT = 300.0
RUN_TIMEOUT = 420.0
KNOWN_FAILURES = Path(__file__).with_name("conformance_known_failures.txt")
#: The vitest project the runs use: generated into the cache folder, next to node_modules.
SUITE_DIR = NODE_PREFIX / "conformance"

_TEST_FILE = """\
import { runConformanceTests } from "@durable-streams/server-conformance-tests"
runConformanceTests({ baseUrl: process.env.CONFORMANCE_TEST_URL, subscriptions: true })
"""
_CONFIG_FILE = """\
export default {
  test: { include: ["conformance.test.mjs"], testTimeout: 30000, hookTimeout: 30000 },
}
"""


@attrs.frozen
class SuiteResult:
    """One run of the suite: every test's full name and vitest status."""

    statuses: dict[str, str]

    @property
    def passed(self) -> set[str]:
        return {name for name, status in self.statuses.items() if status == "passed"}

    @property
    def failed(self) -> set[str]:
        return {name for name, status in self.statuses.items() if status == "failed"}

    def summary(self) -> str:
        counts = Counter(self.statuses.values())
        extra = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s != "passed")
        return f"{counts['passed']}/{len(self.statuses)}" + (f" ({extra})" if extra else "")


def _suite_entry() -> Path:
    return NODE_PREFIX / "node_modules" / "@durable-streams" / "server-conformance-tests"


def _vitest_entry() -> Path:
    return NODE_PREFIX / "node_modules" / "vitest" / "vitest.mjs"


def _installed_version() -> str | None:
    manifest = _suite_entry() / "package.json"
    if not manifest.exists():
        return None
    version = json.loads(manifest.read_text(encoding="utf-8")).get("version")
    return str(version) if version else None


def install_suite() -> Path:
    """Install the suite and vitest into the cache once; return the vitest project folder."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "the conformance suite needs Node.js and npm on PATH (apt-get install nodejs npm)"
        )
    if _installed_version() != SUITE_VERSION or not _vitest_entry().exists():
        NODE_PREFIX.mkdir(parents=True, exist_ok=True)
        try:
            result = subprocess.run(
                [
                    npm,
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--prefix",
                    str(NODE_PREFIX),
                    SUITE_PACKAGE,
                    VITEST_PACKAGE,
                ],
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"npm install {SUITE_PACKAGE} took over {INSTALL_TIMEOUT:.0f} s")
        if result.returncode != 0 or _installed_version() != SUITE_VERSION:
            pytest.fail(f"npm install {SUITE_PACKAGE} failed:\n{result.stderr[-3000:]}")
    SUITE_DIR.mkdir(parents=True, exist_ok=True)
    (SUITE_DIR / "conformance.test.mjs").write_text(_TEST_FILE, encoding="utf-8")
    (SUITE_DIR / "vitest.config.mjs").write_text(_CONFIG_FILE, encoding="utf-8")
    return SUITE_DIR


def run_suite(base_url: str, out_dir: Path) -> SuiteResult:
    """Run the whole suite against ``base_url``; return each test's status."""
    project = install_suite()
    report = out_dir / "conformance.json"
    log = out_dir / "conformance.log"
    command = [
        shutil.which("node") or "node",
        str(_vitest_entry()),
        "run",
        "--root",
        str(project),
        "--reporter=json",
        f"--outputFile={report}",
    ]
    env = {**os.environ, "CONFORMANCE_TEST_URL": base_url, "NO_COLOR": "1", "CI": "1"}
    with log.open("w") as output:
        proc = subprocess.Popen(
            command,
            cwd=project,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(
                f"the conformance suite ran over {RUN_TIMEOUT:.0f} s against {base_url}; "
                f"log:\n{log.read_text()[-3000:]}"
            )
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if not report.exists():
        pytest.fail(
            f"the conformance suite wrote no report (exit status {proc.returncode}); "
            f"log:\n{log.read_text()[-3000:]}"
        )
    return parse_report(json.loads(report.read_text(encoding="utf-8")))


def parse_report(report: dict[str, object]) -> SuiteResult:
    """Read vitest's JSON report: ``testResults[].assertionResults[]`` by full name."""
    statuses: dict[str, str] = {}
    files = report.get("testResults")
    assert isinstance(files, list), "vitest's JSON report has no testResults"
    for file in files:
        for test in file.get("assertionResults", []):
            statuses[str(test["fullName"])] = str(test["status"])
    if not statuses:
        raise AssertionError(f"the conformance report lists no tests: {str(report)[:2000]}")
    return SuiteResult(statuses)


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
