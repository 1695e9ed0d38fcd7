"""Every program in ``examples/`` runs as-is against real ``pullwake server`` processes.

Each example reads the server URL from ``PULLWAKE_URL`` and, with ``EXAMPLE_MESSAGES=N``,
stops by itself after N messages, so these tests run the files unchanged.
"""

from __future__ import annotations

import ast
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.fixtures.servers import ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
JSON = {"Content-Type": "application/json"}
SUBSCRIPTIONS = "/v1/stream/__ds/subscriptions"
WAIT = 30.0


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Example:
    """One example running as a process; its stdout lines are collected as they come."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / name)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        )
        self.lines: list[str] = []
        self._errors: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self._errors), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(pipe: IO[str] | None, into: list[str]) -> None:
        assert pipe is not None
        for line in pipe:
            into.append(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self._errors)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for_line(self, text: str) -> None:
        def seen() -> bool:
            assert self.alive() or text in self.lines, self.finish()
            return text in self.lines

        wait_until(seen, f"{text!r} on the example's stdout")

    def finish(self, timeout: float = WAIT) -> int:
        """Wait for the exit (bounded; killed past it) and return the status."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise AssertionError(f"the example did not exit:\n{self.stderr[-3000:]}") from None
        finally:
            for reader in self._readers:
                reader.join(timeout=5)
        return self.proc.returncode

    def close(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def examples() -> Iterator[Callable[[str, dict[str, str]], Example]]:
    started: list[Example] = []

    def start(name: str, env: dict[str, str]) -> Example:
        started.append(Example(name, env))
        return started[-1]

    yield start
    for example in started:
        example.close()


def subscribed(url: str, subscription: str) -> Callable[[], bool]:
    def check() -> bool:
        return httpx.get(f"{url}{SUBSCRIPTIONS}/{subscription}", timeout=5).status_code == 200

    return check


def streaming(url: str, runner_id: str) -> Callable[[], bool]:
    def check() -> bool:
        answer = httpx.get(f"{url}/v1/runners/{runner_id}/health", timeout=5)
        return answer.status_code == 200 and bool(
            answer.json()["diagnostics"].get("stream_connected")
        )

    return check


def produce(url: str, stream: str, *messages: object) -> None:
    with httpx.Client(base_url=url, timeout=5) as client:
        client.put(f"/v1/stream/{stream}", headers=JSON).raise_for_status()
        for message in messages:
            client.post(f"/v1/stream/{stream}", json=[message]).raise_for_status()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_anyio_worker(
    server_factory: ServerFactory, examples: Callable[..., Example], backend: str
) -> None:
    server = server_factory()
    worker = examples(
        "anyio_worker.py",
        {"PULLWAKE_URL": server.url, "EXAMPLE_MESSAGES": "2", "PULLWAKE_BACKEND": backend},
    )
    wait_until(subscribed(server.url, "orders"), "the orders subscription")
    produce(server.url, "orders/eu", {"order": 1}, {"order": 2})
    assert worker.finish() == 0, worker.stderr
    assert worker.lines == [
        "orders/eu: {'order': 1}",
        "orders/eu: {'order': 2}",
        "handled 2 messages",
    ]


def test_the_trio_worker_stops_after_its_messages(
    server_factory: ServerFactory, examples: Callable[..., Example]
) -> None:
    server = server_factory()
    worker = examples("trio_worker.py", {"PULLWAKE_URL": server.url, "EXAMPLE_MESSAGES": "1"})
    wait_until(subscribed(server.url, "jobs"), "the jobs subscription")
    produce(server.url, "jobs/resize", {"image": "cat.png"})
    assert worker.finish() == 0, worker.stderr
    assert worker.lines == [
        "jobs/resize: {'image': 'cat.png'}",
        "handled 1 messages; health: stopped",
    ]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_trio_worker_stops_cleanly_on_a_signal(
    server_factory: ServerFactory, examples: Callable[..., Example], sig: signal.Signals
) -> None:
    server = server_factory(args=["--keepalive", "0.3"])
    worker = examples("trio_worker.py", {"PULLWAKE_URL": server.url})
    wait_until(streaming(server.url, "trio-worker"), "the trio worker to stream")
    worker.proc.send_signal(sig)
    assert worker.finish() == 0, worker.stderr
    assert worker.lines == [f"{sig.name}: stopping", "handled 0 messages; health: stopped"]
    health = httpx.get(f"{server.url}/v1/runners/trio-worker/health", timeout=5).json()
    assert health["status"] == "offline"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_starlette_app_under_uvicorn(
    server_factory: ServerFactory, examples: Callable[..., Example]
) -> None:
    server = server_factory()
    port = free_port()
    app = examples(
        "starlette_app.py",
        {"PULLWAKE_URL": server.url, "EXAMPLE_PORT": str(port), "EXAMPLE_MESSAGES": "2"},
    )
    base = f"http://127.0.0.1:{port}"

    def app_answers() -> bool:
        assert app.alive(), app.finish()
        try:
            return httpx.get(f"{base}/runner/health", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(app_answers, "the app to serve")
    wait_until(subscribed(server.url, "web-orders"), "the web-orders subscription")
    produce(server.url, "orders/web", {"order": 7})
    wait_until(
        lambda: httpx.get(f"{base}/handled", timeout=5).json() == [{"order": 7}],
        "the app to handle the first order",
    )
    produce(server.url, "orders/web", {"order": 8})
    assert app.finish() == 0, app.stderr  # the second message shut it down by itself
    assert "Application shutdown complete." in app.stderr


@pytest.mark.postgres
def test_two_servers_on_one_postgres_survive_one_dying(
    server_factory: ServerFactory, examples: Callable[..., Example], postgres_dsn: str
) -> None:
    first: ServerProcess = server_factory(postgres_dsn)
    second: ServerProcess = server_factory(postgres_dsn)
    worker = examples(
        "two_servers.py",
        {"PULLWAKE_URL": f"{first.url} {second.url}", "EXAMPLE_MESSAGES": "4"},
    )
    wait_until(subscribed(second.url, "invoices"), "the invoices subscription")
    produce(second.url, "invoices/2026", {"invoice": 1}, {"invoice": 2})
    worker.wait_for_line("invoices/2026: {'invoice': 2}")
    first.kill()
    produce(second.url, "invoices/2026", {"invoice": 3}, {"invoice": 4})
    assert worker.finish(timeout=45) == 0, worker.stderr
    assert worker.lines == [
        *(f"invoices/2026: {{'invoice': {n}}}" for n in (1, 2, 3, 4)),
        "handled 4 distinct messages",
    ]


def test_property_testing_your_own_chart() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "chart_properties.py")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=WAIT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "table and sequences: ok"
    assert result.stderr.strip().endswith("OK")
    assert "Ran 1 test" in result.stderr


#: What applications may import: the packages' public faces, not their modules.
PUBLIC = {"pullwake.runtime", "pullwake.machines", "pullwake.machines.testing", "pullwake.server"}


def test_examples_import_only_the_public_faces() -> None:
    found = {}
    for path in sorted(EXAMPLES.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pullwake"):
                found[f"{path.name}: {node.module}"] = node.module in PUBLIC
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("pullwake"):
                        found[f"{path.name}: {alias.name}"] = alias.name in PUBLIC
    assert found, "no example imports pullwake"
    assert [name for name, public in found.items() if not public] == []
