"""``pullwake run`` and ``pullwake health`` as processes, against a real server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.servers import ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
JSON = {"Content-Type": "application/json"}
WAIT = 15.0


def poll(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate`` (bounded in time and count) until it holds."""
    deadline = time.monotonic() + WAIT
    for _ in range(int(WAIT / 0.05)):
        if predicate():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


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


def pullwake(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pullwake", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        **kwargs,
    )


def run_args(server: ServerProcess, handler: str, *extra: str) -> list[str]:
    return [
        "run",
        f"tests.runtime.cli_handlers:{handler}",
        "--url",
        server.url,
        "--runner-id",
        "r1",
        "--wake-stream",
        "wake/r1",
        "--heartbeat-interval",
        "0.3",
        *extra,
    ]


def streaming(http: httpx.Client) -> bool:
    response = http.get("/v1/runners/r1/health")
    return response.status_code == 200 and bool(
        response.json()["diagnostics"].get("stream_connected")
    )


def finish(proc: subprocess.Popen[str], sig: int | None = None) -> tuple[int, str]:
    if sig is not None:
        proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode, stderr


#: ``pullwake run`` runs on either backend (``--backend``); each test of it runs on both.
BACKENDS = pytest.mark.parametrize("backend", ["asyncio", "trio"])


@BACKENDS
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_handles_wakes_and_stops_cleanly_on_a_signal(
    server: ServerProcess, http: httpx.Client, tmp_path: Path, sig: int, backend: str
) -> None:
    out = tmp_path / "handled.jsonl"
    env = {**os.environ, "PULLWAKE_TEST_OUT": str(out)}
    proc = pullwake(*run_args(server, "record", "--backend", backend), env=env)
    try:
        poll(lambda: streaming(http), "the runner to stream")
        http.post("/v1/stream/jobs/a", json=[{"n": 1}, {"n": 2}]).raise_for_status()
        poll(lambda: out.exists() and len(out.read_text().splitlines()) == 2, "two messages")
    finally:
        status, stderr = finish(proc, sig)
    assert status == 0, stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == [{"n": 1}, {"n": 2}]
    # Transitions are logged, and the stop was a clean one.
    assert "--connected--> running/streaming" in stderr
    assert "--stop--> stopping" in stderr
    assert http.get("/v1/runners/r1/health").json()["status"] == "offline"


@BACKENDS
def test_run_exits_3_without_waiting_for_a_handler_that_ignores_cancellation(
    server: ServerProcess, http: httpx.Client, backend: str
) -> None:
    proc = pullwake(*run_args(server, "stubborn", "--grace", "0.2", "--backend", backend))
    try:
        poll(lambda: streaming(http), "the runner to stream")
        http.post("/v1/stream/jobs/a", json=[1]).raise_for_status()
        poll(
            lambda: http.get("/v1/stream/__ds/subscriptions/s").json()["holder"] == "r1",
            "the claim",
        )
    finally:
        status, stderr = finish(proc, signal.SIGTERM)
    assert status == 3, stderr
    assert "handler for subscription 's'" in stderr
    # Its claim was released before the process left.
    assert http.get("/v1/stream/__ds/subscriptions/s").json()["holder"] is None


@BACKENDS
def test_run_with_a_wrong_token_exits_1_with_a_clear_message(
    server_factory: ServerFactory, backend: str
) -> None:
    server = server_factory(args=["--admin-token", "adm", "--runner-token", "r1=right"])
    args = run_args(server, "record", "--token", "wrong", "--backend", backend)
    status, stderr = finish(pullwake(*args))
    assert status == 1
    assert "refused this runner's credentials" in stderr
    # The last line speaks of the command's options, not of Runner()'s keywords.
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("pullwake run: ")
    assert "(--token)" in last
    assert "token=" not in last


def test_run_without_a_wake_stream_advises_the_option(server: ServerProcess) -> None:
    args = ["run", "tests.runtime.cli_handlers:record", "--url", server.url, "--runner-id", "r9"]
    status, stderr = finish(pullwake(*args))
    assert status == 1
    last = stderr.strip().splitlines()[-1]
    assert "no wake stream: pass --wake-stream" in last
    assert "wake_stream=" not in last


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        ("no_colon", "not MODULE:HANDLER"),
        ("tests.runtime.no_such_module:record", "cannot import module"),
        ("tests.runtime.cli_handlers:missing", "has no attribute"),
        ("tests.runtime.cli_handlers:not_callable", "not callable"),
    ],
)
def test_run_refuses_a_handler_it_cannot_import(handler: str, message: str) -> None:
    args = ["run", handler, "--url", "http://127.0.0.1:1", "--runner-id", "r1"]
    status, stderr = finish(pullwake(*args))
    assert status == 2
    assert message in stderr


@BACKENDS
def test_health_prints_the_servers_verdict(
    server: ServerProcess, http: httpx.Client, tmp_path: Path, backend: str
) -> None:
    env = {**os.environ, "PULLWAKE_TEST_OUT": str(tmp_path / "out.jsonl")}
    proc = pullwake(*run_args(server, "record", "--backend", backend), env=env)
    try:
        poll(lambda: streaming(http), "the runner to stream")
        healthy = subprocess.run(
            [sys.executable, "-m", "pullwake", "health", server.url, "r1"],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        as_json = subprocess.run(
            [sys.executable, "-m", "pullwake", "health", server.url, "r1", "--json"],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
    finally:
        finish(proc, signal.SIGTERM)
    stopped = subprocess.run(
        [sys.executable, "-m", "pullwake", "health", server.url, "r1"],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    unknown = subprocess.run(
        [sys.executable, "-m", "pullwake", "health", server.url, "nobody"],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "runner r1: HEALTHY" in healthy.stdout
    assert json.loads(as_json.stdout)["verdict"] == "healthy"
    assert stopped.returncode == 2
    assert "UNHEALTHY" in stopped.stdout
    assert "stopped cleanly" in stopped.stdout
    assert unknown.returncode == 3
    assert "404" in unknown.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(url: str) -> str | None:
    try:
        answer = httpx.get(url, timeout=2)
    except httpx.TransportError:
        return None
    return answer.text if answer.status_code == 200 else None


@BACKENDS
def test_run_serves_metrics_and_logs_json_lines(
    server: ServerProcess, http: httpx.Client, tmp_path: Path, backend: str
) -> None:
    out = tmp_path / "handled.jsonl"
    env = {**os.environ, "PULLWAKE_TEST_OUT": str(out), "PULLWAKE_LOG_FORMAT": "json"}
    url = f"http://127.0.0.1:{free_port()}/metrics"
    port = url.rsplit(":", 1)[1].split("/")[0]
    proc = pullwake(
        *run_args(server, "record", "--backend", backend, "--metrics-port", port), env=env
    )
    try:
        poll(lambda: streaming(http), "the runner to stream")
        http.post("/v1/stream/jobs/a", json=[{"n": 1}]).raise_for_status()
        poll(lambda: out.exists(), "the message to be handled")
        poll(
            lambda: (
                'pullwake_runner_claims_total{outcome="succeeded",runner="r1"} 1.0'
                in (scrape(url) or "")
            ),
            "the scrape to count the claim",
        )
        text = scrape(url) or ""
    finally:
        status, stderr = finish(proc, signal.SIGTERM)
    assert status == 0, stderr
    assert 'pullwake_runner_wakes_total{runner="r1"} 1.0' in text
    assert 'pullwake_runner_state{runner="r1",state="streaming"} 1.0' in text
    assert (
        'pullwake_runner_handler_duration_seconds_count{runner="r1",subscription="s"} 1.0' in text
    )
    lines = [json.loads(line) for line in stderr.splitlines()]
    assert all({"ts", "level", "logger", "message"} <= set(entry) for entry in lines)
    transitions = [e for e in lines if "--connected--> running/streaming" in e["message"]]
    assert transitions
    assert transitions[0]["runner_id"] == "r1"
    # httpx's per-request INFO lines are off by default.
    assert not [e for e in lines if e["logger"].startswith(("httpx", "httpcore"))]


@BACKENDS
def test_run_with_a_busy_metrics_port_exits_2_with_one_line(backend: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        proc = pullwake(
            "run",
            "tests.runtime.cli_handlers:record",
            "--url",
            "http://127.0.0.1:9",
            "--runner-id",
            "r1",
            "--wake-stream",
            "wake/r1",
            "--backend",
            backend,
            "--metrics-port",
            port,
        )
        status, stderr = finish(proc)
    assert status == 2, stderr
    assert f"pullwake run: cannot serve metrics on 127.0.0.1:{port}: " in stderr
    assert "give a free --metrics-port" in stderr
    assert "Traceback" not in stderr
