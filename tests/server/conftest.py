"""Print the conformance totals (pullwake and the reference server) after the test summary."""

from __future__ import annotations

import pytest

from tests.server.conformance import totals_line


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    line = totals_line(terminalreporter.config)
    if line is not None:
        terminalreporter.write_sep("=", "Durable Streams conformance suite")
        terminalreporter.write_line(line)
