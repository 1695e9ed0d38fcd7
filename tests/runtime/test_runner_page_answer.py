"""A proxy or a wrong URL answering an HTML page is said once per run, then only counted."""

from __future__ import annotations

import logging

import anyio
import httpx
import pytest

from pullwake.runtime import Claim, Runner, RunnerSettings
from pullwake.runtime.backoff import Backoff
from pullwake.runtime.offsets import MemoryOffsetStore
from pullwake.testing.waiting import wait_until

pytestmark = pytest.mark.anyio

PAGE = b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>" + b"x" * 400


async def ignore(claim: Claim) -> None:
    raise AssertionError("no claim can come from a proxy's error page")


async def test_an_html_page_answer_is_logged_once_then_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="pullwake.runner")
    answers = 0

    def proxy(request: httpx.Request) -> httpx.Response:
        nonlocal answers
        answers += 1
        return httpx.Response(502, content=PAGE, headers={"Content-Type": "text/html"})

    runner = Runner(
        "http://proxy.test",
        runner_id="r1",
        handler=ignore,
        wake_stream="wake/r1",
        settings=RunnerSettings(
            backoff=Backoff(initial=0.01, maximum=0.02), heartbeat_interval=60.0
        ),
        transport=httpx.MockTransport(proxy),
        offset_store=MemoryOffsetStore(),
    )
    with anyio.fail_after(15):
        async with runner:
            await wait_until(lambda: runner.statistics().reconnects >= 4, message="4 retries")
            health = runner.health()

    records = [r for r in caplog.records if r.name == "pullwake.runner"]
    said = [
        r for r in records if "this is an HTML page, not a Durable Streams server" in r.getMessage()
    ]
    assert len(said) == 1, [r.getMessage() for r in said]
    [first] = said
    assert first.levelno == logging.WARNING
    assert "POST http://proxy.test/v1/runners answered 502" in first.getMessage()
    # The page itself is never pasted into a log line.
    assert not [r for r in records if "<html" in r.getMessage().lower()]
    # Later identical answers are counted: in the chart's lines, at DEBUG, and in the health.
    repeats = [r.getMessage() for r in records if "same HTML page again" in r.getMessage()]
    assert any("(3 times this run)" in line for line in repeats), repeats
    debug = [r for r in records if r.levelno == logging.DEBUG and "times)" in r.getMessage()]
    assert debug
    assert "with the same HTML page again" in health["last_error"]
    assert answers >= 4
