"""``make demo`` runs the whole loop by itself and exits 0."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.e2e
def test_demo_rides_out_a_server_crash_and_exits_0() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pullwake.demo"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "-- SIGKILL the server --" in done.stdout
    assert "24/24 orders handled, 0 lost, 0 handled twice" in done.stdout
    assert '"status": "offline"' in done.stdout  # the final heartbeat said "stopped"
    assert "class streaming active" in done.stdout  # the diagram shows the active state
