"""The docs' runnable examples, extracted from the pages and run against real servers.

A runnable block is a ```python block preceded by ``<!-- example: NAME -->``. Every python block
of the pages below must carry a name, and the names must be exactly :data:`EXAMPLES`, so a
block that loses its marker, disappears or appears unnamed fails here. Each block is then run
as the page shows it, with only the server URL (and, for ``anyio.run``, the backend) swapped:
programs as processes (stopped with Ctrl-C, every wait bounded), fragments in process on both
backends. Marked ```sh blocks (the server page's curl and admin-CLI sessions) run with bash
against a real server too. docs/testing.md's blocks are run, in order, by
``tests/machines/test_testing_doc.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import anyio
import httpx
import pytest

from pullwake.testing.waiting import wait_until as wait_until_async
from tests.fixtures.servers import ServerFactory, ServerProcess
from tests.test_examples import streaming, subscribed, wait_until

REPO = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "docs/embedding.md", "docs/server.md", "docs/testing.md", "docs/runner.md")
DOC_URL = "http://127.0.0.1:4437"
JSON = {"Content-Type": "application/json"}
SUBSCRIPTIONS = "/v1/stream/__ds/subscriptions"
WAIT = 30.0

#: Every named example, and the page that holds it.
EXAMPLES = {
    "readme-runner": "README.md",
    "embedding-handler": "docs/embedding.md",
    "embedding-lifespan": "docs/embedding.md",
    "embedding-anyio": "docs/embedding.md",
    "embedding-trio": "docs/embedding.md",
    "embedding-dead-letter": "docs/embedding.md",
    "testing-chart": "docs/testing.md",
    "testing-table": "docs/testing.md",
    "testing-stateful": "docs/testing.md",
    "testing-properties": "docs/testing.md",
}

#: Shell sessions that are cheap to run (curl, the admin CLI), each named the same way.
SHELL_EXAMPLES = {
    "server-cli-session": "docs/server.md",
    "server-curl-session": "docs/server.md",
}

SHELL = re.compile(r"^<!-- example: ([\w-]+) -->\n```sh\n(.*?)^```$", re.M | re.S)
MARKED = re.compile(r"^(?:<!-- example: ([\w-]+) -->\n)?```python\n(.*?)^```$", re.M | re.S)


def blocks_of(page: str) -> list[tuple[str | None, str]]:
    """Return the page's python blocks as (name or None, code), in order."""
    text = (REPO / page).read_text(encoding="utf-8")
    return [(name or None, code) for name, code in MARKED.findall(text)]


def example(name: str, backend: str | None = None, url: str = DOC_URL) -> str:
    """Return the code of example ``name``, pointed at ``url`` (and run on ``backend``)."""
    [code] = [code for found, code in blocks_of(EXAMPLES[name]) if found == name]
    if url != DOC_URL:
        assert DOC_URL in code, f"{name} no longer talks to {DOC_URL}"
        code = code.replace(f'"{DOC_URL}"', repr(url))
    if backend is not None:
        assert "anyio.run(main)" in code, f"{name} no longer ends with anyio.run(main)"
        code = code.replace("anyio.run(main)", f"anyio.run(main, backend={backend!r})")
    return code


def test_every_python_block_is_named_and_every_named_example_is_there() -> None:
    found: dict[str, str] = {}
    for page in PAGES:
        for name, code in blocks_of(page):
            assert name is not None, (
                f"an unnamed python block in {page} (mark it <!-- example: NAME --> and run "
                f"it here, or say why not): {code[:80]!r}"
            )
            assert name not in found, f"example {name!r} is named twice"
            found[name] = page
    assert found == EXAMPLES
    shells = {}
    for page in PAGES:
        text = (REPO / page).read_text(encoding="utf-8")
        shells.update({name: page for name, _ in SHELL.findall(text)})
    assert shells == SHELL_EXAMPLES


def shell_example(name: str) -> str:
    """Return the code of the shell session ``name``, as the page shows it."""
    text = (REPO / SHELL_EXAMPLES[name]).read_text(encoding="utf-8")
    [code] = [code for found, code in SHELL.findall(text) if found == name]
    return code


def run_shell(code: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", code],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **env},
        timeout=WAIT,
    )


@pytest.mark.e2e
def test_the_curl_session_of_the_server_page(server_factory: ServerFactory, tmp_path: Path) -> None:
    if shutil.which("curl") is None or shutil.which("jq") is None:
        pytest.skip("the curl session needs curl and jq")
    server = server_factory()
    code = shell_example("server-curl-session")
    assert f"S={DOC_URL}\n" in code
    done = run_shell(code.replace(f"S={DOC_URL}\n", f"S={server.url}\n"), tmp_path, {})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "HTTP/1.1 201 Created"
    assert "201" in lines
    assert 'data:[{"type":"wake","subscription_id":"orders","stream":"events/orders",' in (
        done.stdout
    )
    assert '[{"order":1,"item":"tea"}]' in lines
    assert '{"ok":true,"next_wake":false}' in lines
    assert json.loads(lines[-1])["error"]["code"] == "NO_PENDING_WORK"


@pytest.mark.e2e
def test_the_admin_cli_session_of_the_server_page(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = server_factory()
    code = shell_example("server-cli-session")
    assert code.count("pullwake ") == 7
    # The commands as a user's shell runs them, with this interpreter's pullwake; the
    # background tail is stopped at the end (the page leaves it to the user).
    code = code.replace("pullwake ", f"{sys.executable} -m pullwake ")
    code += "sleep 1; kill %1; wait\n"
    done = run_shell(code, tmp_path, {"PULLWAKE_URL": server.url})
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert '{"order":1,"item":"tea"}' in out.splitlines(), out
    # The tail saw the wake the append caused.
    assert '"type":"wake"' in out, out
    assert '"subscription_id":"orders"' in out, out


class Program:
    """One example running as a process; stdout lines are collected as they come."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=path.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.readers = [
            threading.Thread(target=self.read, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self.read, args=(self.proc.stderr, self.errors), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def read(pipe: IO[str] | None, into: list[str]) -> None:
        assert pipe is not None
        for line in pipe:
            into.append(line.rstrip("\n"))

    def wait_for_line(self, line: str) -> None:
        def seen() -> bool:
            assert self.proc.poll() is None or line in self.lines, "\n".join(self.errors)
            return line in self.lines

        wait_until(seen, f"{line!r} on stdout")

    def interrupt(self) -> int:
        """Send Ctrl-C and return the exit status (bounded: killed after WAIT)."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise AssertionError(f"still running {WAIT} s after Ctrl-C") from None
        finally:
            for reader in self.readers:
                reader.join(timeout=5)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def program(tmp_path: Path) -> Iterator[Callable[[str], Program]]:
    started: list[Program] = []

    def start(code: str) -> Program:
        path = tmp_path / f"example_{len(started)}.py"
        path.write_text(code, encoding="utf-8")
        started.append(Program(path))
        return started[-1]

    yield start
    for each in started:
        each.close()


def offline(url: str, runner_id: str) -> bool:
    answer = httpx.get(f"{url}/v1/runners/{runner_id}/health", timeout=5)
    return bool(answer.json()["status"] == "offline")


BACKENDS = pytest.mark.parametrize("backend", ["asyncio", "trio"])


@pytest.mark.e2e
@BACKENDS
def test_the_readme_runner_handles_an_order_and_stops_on_ctrl_c(
    server_factory: ServerFactory, program: Callable[[str], Program], backend: str
) -> None:
    server = server_factory(args=["--keepalive", "0.3"])
    run = program(example("readme-runner", backend, server.url))
    wait_until(subscribed(server.url, "orders"), "the runner's orders subscription")
    with httpx.Client(base_url=server.url, timeout=5) as client:
        client.put("/v1/stream/orders/eu", headers=JSON).raise_for_status()
        client.post("/v1/stream/orders/eu", json=[{"order": 1}]).raise_for_status()
    run.wait_for_line("orders/eu {'order': 1}")
    run.interrupt()
    # However the program ends on Ctrl-C, the runner stopped cleanly first.
    assert offline(server.url, "worker-1"), "\n".join(run.errors)


@pytest.mark.e2e
@BACKENDS
def test_the_plain_anyio_program_handles_every_wake_of_its_stream(
    server_factory: ServerFactory, program: Callable[[str], Program], backend: str
) -> None:
    server = server_factory(args=["--keepalive", "0.3"])
    run = program(example("embedding-anyio", backend, server.url))
    wait_until(streaming(server.url, "worker-1"), "the runner to stream")
    with httpx.Client(base_url=server.url, timeout=5) as client:
        client.put("/v1/stream/jobs/a", headers=JSON).raise_for_status()
        client.put(
            f"{SUBSCRIPTIONS}/jobs",
            json={"type": "pull-wake", "wake_stream": "wake/worker-1", "streams": ["jobs/a"]},
        ).raise_for_status()
        client.post("/v1/stream/jobs/a", json=[{"n": 1}, {"n": 2}]).raise_for_status()
    run.wait_for_line("jobs/a {'n': 2}")
    assert run.lines == ["jobs/a {'n': 1}", "jobs/a {'n': 2}"]
    run.interrupt()
    assert offline(server.url, "worker-1"), "\n".join(run.errors)


@pytest.mark.e2e
def test_the_trio_program_streams_then_stops_cleanly_on_ctrl_c(
    server_factory: ServerFactory, program: Callable[[str], Program]
) -> None:
    server = server_factory(args=["--keepalive", "0.3"])
    run = program(example("embedding-trio", url=server.url))
    run.wait_for_line("streaming; health: streaming")
    assert run.interrupt() == 0, "\n".join(run.errors)
    assert offline(server.url, "trio-1")


def namespace_of(*names: str, url: str) -> dict[str, Any]:
    """Execute examples ``names`` in order in one namespace (as one module) and return it;
    the last one is pointed at ``url``."""
    namespace: dict[str, Any] = {"__name__": "doc_example"}
    for name in names:
        code = example(name, url=url if name == names[-1] else DOC_URL)
        exec(compile(code, f"<{name}>", "exec"), namespace)
    return namespace


async def append(url: str, stream: str, *messages: object) -> str:
    """Create ``stream`` and append ``messages``; return the tail offset after them."""
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        (await client.put(f"/v1/stream/{stream}", headers=JSON)).raise_for_status()
        answer = await client.post(f"/v1/stream/{stream}", json=list(messages))
        answer.raise_for_status()
        return answer.headers["Stream-Next-Offset"]


async def acked_to(url: str, subscription: str, stream: str, offset: str) -> bool:
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        answer = await client.get(f"{SUBSCRIPTIONS}/{subscription}")
    links = {link["path"]: link for link in answer.json().get("streams", [])}
    return stream in links and links[stream]["acked_offset"] == offset


@pytest.mark.anyio
async def test_the_handler_and_the_dead_letter_settings_run_a_subscription(
    server_factory: ServerFactory, anyio_backend: str
) -> None:
    server: ServerProcess = server_factory(args=["--keepalive", "0.3"])
    namespace = namespace_of("embedding-handler", "embedding-dead-letter", url=server.url)
    runner = namespace["runner"]
    assert runner.settings.handler_timeout == 30.0
    assert runner.settings.dead_letter_stream == "dead/orders"
    with anyio.fail_after(WAIT):
        async with runner:
            await runner.wait_state("streaming")
            tail = await append(server.url, "orders/a", {"order": 1}, {"order": 2})
            await wait_until_async(
                lambda: acked_to(server.url, "orders", "orders/a", tail),
                message="the handler's claim acked to the tail",
            )


@pytest.mark.anyio
async def test_the_starlette_lifespan_runs_the_runner_and_serves_its_health(
    server_factory: ServerFactory, anyio_backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    server: ServerProcess = server_factory(args=["--keepalive", "0.3"])
    app = namespace_of("embedding-lifespan", url=server.url)["app"]
    printed: list[str] = []

    def handled() -> bool:
        printed.extend(capsys.readouterr().out.splitlines())
        return "handling orders/web {'order': 7}" in printed

    with anyio.fail_after(WAIT):
        async with app.router.lifespan_context(app):
            runner = app.state.runner
            await runner.wait_state("streaming")
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                health = (await client.get("/runner/health")).json()
            assert health["status"] == "streaming"
            await append(server.url, "orders/web", {"order": 7})
            await wait_until_async(handled, message="the lifespan's runner to handle the order")
        assert runner.state == "stopped"
    assert offline(server.url, "web-1")
