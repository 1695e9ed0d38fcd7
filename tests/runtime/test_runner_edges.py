"""A newcomer's mistakes and endings get a clear answer (issue 13 defects 1, 3 and 4).

- A runner that stops for good inside ``async with Runner(...)`` cancels the body and raises
  its error on exit, as a task group does; it never leaves the body waiting forever.
- Cancelling the code around a runner ends it promptly in any state, a hung connect included.
- A server URL without a scheme fails at once, naming the fix; an exception raised while the
  runner starts reaches the caller as it is, never replaced by anyio's cancel-scope error.
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from pullwake.errors import PullwakeError
from pullwake.runtime import (
    Backoff,
    Claim,
    InvalidServerURL,
    ManualClock,
    Rejected,
    Runner,
    RunnerSettings,
    TransitionRecord,
)
from pullwake.runtime import runner as runner_module

from .fakeserver import FakeServer
from .waiting import wait_until

pytestmark = pytest.mark.anyio


async def ignore(claim: Claim) -> None:
    """A handler that does nothing: these tests are about the runner's edges."""


def make_runner(fake: FakeServer, **options: Any) -> Runner:
    records: list[TransitionRecord] = options.pop("records", [])
    return Runner(
        "http://fake",
        runner_id="r1",
        handler=ignore,
        wake_stream="wake/r1",
        grace=0.5,
        clock=options.pop("clock", ManualClock()),
        settings=RunnerSettings(
            heartbeat_interval=100.0, backoff=Backoff(initial=1.0, maximum=8.0), stop_bound=0.5
        ),
        transport=fake.transport(),
        inspect=records.append,
        rng=random.Random(3),
        **options,
    )


def new_fake() -> FakeServer:
    fake = FakeServer()
    fake.subscribe("s", ["jobs/a"], "wake/r1")
    return fake


# -- defect 1: a runner that stops for good ends the block around it ------------------------


async def test_a_fatal_refusal_cancels_the_block_and_raises_on_exit(anyio_backend: str) -> None:
    fake = new_fake()
    fake.fail("sse", 401)
    reached = []

    async def block() -> None:
        async with make_runner(fake):
            await anyio.sleep_forever()
            reached.append("after sleep_forever")

    with anyio.fail_after(10), pytest.raises(Rejected, match="credentials") as caught:
        await block()
    assert caught.value.status == 401
    assert reached == []
    assert fake.count("sse") == 1


async def test_a_refusal_later_in_the_run_cancels_the_block_too(anyio_backend: str) -> None:
    fake = new_fake()
    clock = ManualClock()

    async def block() -> None:
        async with make_runner(fake, clock=clock) as runner:
            await runner.wait_state("streaming")
            fake.fail("heartbeat", 403)
            await clock.wait_sleepers(1)
            clock.advance(100.0)
            await anyio.sleep_forever()

    with anyio.fail_after(10), pytest.raises(Rejected) as caught:
        await block()
    assert caught.value.status == 403


async def test_a_body_error_is_not_replaced_by_the_runner(anyio_backend: str) -> None:
    fake = new_fake()

    async def block() -> None:
        async with make_runner(fake) as runner:
            await runner.wait_state("streaming")
            raise KeyError("mine")

    with anyio.fail_after(10), pytest.raises(KeyError, match="mine"):
        await block()


# -- defect 3: cancellation ends a runner in any state, promptly ----------------------------


@pytest.mark.parametrize("hang", ["sse", "register"])
async def test_cancelling_the_caller_ends_a_hung_connect_promptly(
    anyio_backend: str, hang: str
) -> None:
    fake = new_fake()
    fake.hang(hang)
    records: list[TransitionRecord] = []
    with anyio.fail_after(10):
        with anyio.CancelScope() as caller:
            async with make_runner(fake, records=records) as runner:
                await runner.wait_state("connecting")
                await wait_until(lambda: fake.count(hang) > 0, timeout=5)
                started = time.monotonic()
                caller.cancel()
                await anyio.sleep_forever()
    took = time.monotonic() - started
    assert caller.cancelled_caught
    assert took < 2.0, took
    assert [r.target[-1] for r in records if r.kind == "transition"][-2:] == [
        "stopping",
        "stopped",
    ]


# -- defect 4: bad URLs fail early; errors in start() reach the caller as they are ----------


@pytest.mark.parametrize(
    ("url", "fix"),
    [
        ("127.0.0.1:4437", "http://127.0.0.1:4437"),
        ("localhost:4437", "http://localhost:4437"),
        ("ftp://example.com", "http:// or https://"),
        ("http://", "host"),
    ],
)
def test_a_url_without_a_usable_scheme_fails_at_once_naming_the_fix(url: str, fix: str) -> None:
    with pytest.raises(InvalidServerURL) as caught:
        Runner(url, runner_id="r1", handler=ignore)
    assert isinstance(caught.value, PullwakeError)
    assert isinstance(caught.value, ValueError)
    assert fix in str(caught.value)
    assert url in str(caught.value)
    # Every URL of a list is checked, not only the first.
    with pytest.raises(InvalidServerURL):
        Runner(["http://ok:1", url], runner_id="r1", handler=ignore)


async def test_an_exception_in_start_reaches_the_caller_as_it_is(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken(Exception):
        pass

    def broken_run(*args: Any, **kwargs: Any) -> None:
        raise Broken("the run could not be made")

    monkeypatch.setattr(runner_module, "Run", broken_run)
    fake = new_fake()
    runner = make_runner(fake)
    with anyio.fail_after(10):
        with pytest.raises(Broken, match="could not be made"):
            async with runner:
                pytest.fail("the block must not run")
        # The runner is usable again afterwards: nothing of the failed entry is left.
        monkeypatch.undo()
        async with runner:
            await runner.wait_state("streaming")


# -- defect 3, as a user meets it: the docs' trio example obeys Ctrl-C while connecting -----

EMBEDDING_DOC = Path(__file__).resolve().parents[2] / "docs" / "embedding.md"


def trio_example() -> str:
    """Return the code block of the doc's section "A trio program, with signals ..."."""
    text = EMBEDDING_DOC.read_text(encoding="utf-8")
    section = text[text.index("## A trio program") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("\n```", start)]


def test_the_docs_trio_example_ends_promptly_on_ctrl_c_while_connecting() -> None:
    """A server that accepts the connection and never answers keeps the runner connecting."""
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    code = trio_example().replace("http://127.0.0.1:4437", f"http://127.0.0.1:{port}")
    assert f"127.0.0.1:{port}" in code
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        try:
            # The runner's first request reached the silent server: it is connecting now.
            silent.settimeout(20)
            accepted, _ = silent.accept()
            time.sleep(0.5)
            sent = time.monotonic()
            process.send_signal(signal.SIGINT)
            try:
                _, err = process.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                pytest.fail("the example was still running 15 s after Ctrl-C while connecting")
            took = time.monotonic() - sent
            accepted.close()
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
            silent.close()
    stderr = err.decode()
    assert process.returncode == 0, stderr
    assert took < 5.0, took
