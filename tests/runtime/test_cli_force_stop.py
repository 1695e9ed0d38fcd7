"""A second Ctrl-C forces the stop of ``pullwake run``; the first says how long it waits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.servers import ServerFactory, ServerProcess
from tests.runtime.test_cli import BACKENDS, REPO, WAIT, poll, run_args, streaming

pytestmark = pytest.mark.e2e

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    return server_factory(args=["--keepalive", "0.3"])


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=5) as client:
        client.put("/v1/stream/wake/r1", headers=JSON).raise_for_status()
        client.put("/v1/stream/jobs/a", headers=JSON).raise_for_status()
        client.put(
            "/v1/stream/__ds/subscriptions/s",
            json={"type": "pull-wake", "wake_stream": "wake/r1", "streams": ["jobs/a"]},
        ).raise_for_status()
        yield client


def holder(http: httpx.Client) -> str | None:
    value = http.get("/v1/stream/__ds/subscriptions/s").json()["holder"]
    return str(value) if value is not None else None


@BACKENDS
def test_a_second_signal_forces_the_stop_and_releases_the_claim(
    server: ServerProcess, http: httpx.Client, tmp_path: Path, backend: str
) -> None:
    out = tmp_path / "handled.txt"
    log = tmp_path / "run.stderr"
    env = {**os.environ, "PULLWAKE_TEST_OUT": str(out)}
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pullwake",
                *run_args(server, "slow", "--grace", "120", "--backend", backend),
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
            cwd=REPO,
            env=env,
        )
    try:
        poll(lambda: streaming(http), "the runner to stream")
        http.post("/v1/stream/jobs/a", json=[1]).raise_for_status()
        poll(lambda: out.exists() and "started" in out.read_text(), "the handler to start")
        proc.send_signal(signal.SIGINT)
        poll(lambda: "press Ctrl-C again to force" in log.read_text(), "the first stop line")
        first = [line for line in log.read_text().splitlines() if "Ctrl-C again" in line]
        assert len(first) == 1, first
        assert "finishing 1 handler(s), waiting up to 120 s" in first[0]
        # The first signal is graceful: the handler still runs and holds its claim.
        time.sleep(0.5)
        assert proc.poll() is None, log.read_text()
        assert holder(http) == "r1"
        forced_at = time.monotonic()
        proc.send_signal(signal.SIGINT)
        status = proc.wait(timeout=WAIT)
        took = time.monotonic() - forced_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    text = log.read_text()
    assert status == 130, text
    assert "forcing the stop: cancelling 1 handler(s)" in text
    # Forced, not waited out: far less than the 120 s grace (the bound is 3 stop bounds).
    assert took < 60, text
    # Released best-effort on the way out: the server answered, so nothing waits for a lease.
    assert "the stop grace period expired" in text
    assert holder(http) is None
