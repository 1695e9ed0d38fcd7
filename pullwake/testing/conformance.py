"""Run the public Durable Streams conformance suite against a server and read its verdict.

The suite is the npm package ``@durable-streams/server-conformance-tests`` (vitest tests that
speak HTTP to ``CONFORMANCE_TEST_URL``). :func:`install_suite` installs it on first use into the
same cache folder as the reference server (:func:`~pullwake.testing.reference.node_prefix`,
outside the source tree), together with the vitest it runs under; :func:`run_suite` runs it with
vitest's JSON reporter and returns every test's full name and status, so a caller can compare a
run with a list of known failures.

Every step is bounded: the install by :data:`INSTALL_TIMEOUT`, one run by :data:`RUN_TIMEOUT`
(the whole suite takes about 90 s on a quiet machine); a run that overstays is killed with its
process group. Failures raise :class:`~pullwake.testing.errors.LaunchError`
(:class:`~pullwake.testing.errors.ToolMissing` without Node.js or npm).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import attrs

from .errors import LaunchError, ToolMissing
from .reference import node_prefix

__all__ = ["SuiteResult", "install_suite", "parse_report", "run_suite"]

SUITE_VERSION = "0.3.6"
SUITE_PACKAGE = f"@durable-streams/server-conformance-tests@{SUITE_VERSION}"
VITEST_PACKAGE = "vitest@4.1.12"
INSTALL_TIMEOUT = 300.0
RUN_TIMEOUT = 420.0

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
        """Return the names of the tests that passed."""
        return {name for name, status in self.statuses.items() if status == "passed"}

    @property
    def failed(self) -> set[str]:
        """Return the names of the tests that failed."""
        return {name for name, status in self.statuses.items() if status == "failed"}

    def summary(self) -> str:
        """Return ``passed/total`` and the other statuses' counts, e.g. ``193/338 (145 failed)``."""
        counts = Counter(self.statuses.values())
        extra = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s != "passed")
        return f"{counts['passed']}/{len(self.statuses)}" + (f" ({extra})" if extra else "")


def _suite_entry() -> Path:
    """Return the installed suite's package folder."""
    return node_prefix() / "node_modules" / "@durable-streams" / "server-conformance-tests"


def _vitest_entry() -> Path:
    """Return vitest's command-line entry point."""
    return node_prefix() / "node_modules" / "vitest" / "vitest.mjs"


def _installed_version() -> str | None:
    """Return the installed suite's version, or None when it is not installed."""
    manifest = _suite_entry() / "package.json"
    if not manifest.exists():
        return None
    version = json.loads(manifest.read_text(encoding="utf-8")).get("version")
    return str(version) if version else None


def install_suite() -> Path:
    """Install the suite and vitest into the cache once; return the vitest project folder."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise ToolMissing(
            "the conformance suite needs Node.js and npm on PATH (apt-get install nodejs npm)"
        )
    if _installed_version() != SUITE_VERSION or not _vitest_entry().exists():
        node_prefix().mkdir(parents=True, exist_ok=True)
        try:
            result = subprocess.run(
                [
                    npm,
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--prefix",
                    str(node_prefix()),
                    SUITE_PACKAGE,
                    VITEST_PACKAGE,
                ],
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
            )
        except subprocess.TimeoutExpired as exc:
            message = f"npm install {SUITE_PACKAGE} took over {INSTALL_TIMEOUT:.0f} s"
            raise LaunchError(message) from exc
        if result.returncode != 0 or _installed_version() != SUITE_VERSION:
            raise LaunchError(f"npm install {SUITE_PACKAGE} failed:\n{result.stderr[-3000:]}")
    suite_dir = node_prefix() / "conformance"
    suite_dir.mkdir(parents=True, exist_ok=True)
    (suite_dir / "conformance.test.mjs").write_text(_TEST_FILE, encoding="utf-8")
    (suite_dir / "vitest.config.mjs").write_text(_CONFIG_FILE, encoding="utf-8")
    return suite_dir


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
        except subprocess.TimeoutExpired as exc:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise LaunchError(
                f"the conformance suite ran over {RUN_TIMEOUT:.0f} s against {base_url}; "
                f"log:\n{log.read_text()[-3000:]}"
            ) from exc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if not report.exists():
        raise LaunchError(
            f"the conformance suite wrote no report (exit status {proc.returncode}); "
            f"log:\n{log.read_text()[-3000:]}"
        )
    return parse_report(json.loads(report.read_text(encoding="utf-8")))


def parse_report(report: dict[str, Any]) -> SuiteResult:
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
