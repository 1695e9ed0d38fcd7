"""JSON log lines: one object per line with the fields a log shipper filters on."""

from __future__ import annotations

import json
import logging
import random

import anyio
import pytest

from pullwake.logs import JsonFormatter, configure_logging
from pullwake.runtime import Claim, Runner, RunnerSettings
from pullwake.runtime.clock import ManualClock
from tests.runtime.fakeserver import FakeServer
from tests.runtime.waiting import wait_until


def test_a_record_becomes_one_json_line_with_its_fields() -> None:
    record = logging.LogRecord(
        "pullwake.claims", logging.WARNING, __file__, 1, "%s broke", ("x",), None
    )
    record.subscription = "s"
    record.wake_id = "w-1"
    record.generation = 4
    record.runner_id = "r1"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry.pop("ts").endswith("Z")
    assert entry == {
        "level": "WARNING",
        "logger": "pullwake.claims",
        "message": "x broke",
        "subscription": "s",
        "wake_id": "w-1",
        "generation": 4,
        "runner_id": "r1",
    }


def test_an_exception_is_one_field_of_the_same_line() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "failed", (), exc_info=__import__("sys").exc_info()
        )
    line = JsonFormatter().format(record)
    assert len(line.splitlines()) == 1
    assert "ValueError: bad" in json.loads(line)["exc"]


def test_configure_logging_replaces_its_handler_and_quiets_httpx() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("INFO", "json")
        configure_logging("INFO", "json")
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        assert logging.getLogger("httpx").level == logging.WARNING
        configure_logging("DEBUG", "text")
        assert not isinstance(root.handlers[0].formatter, JsonFormatter)
        assert logging.getLogger("httpx").level == logging.DEBUG
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.getLogger("httpx").setLevel(logging.NOTSET)
        logging.getLogger("httpcore").setLevel(logging.NOTSET)


@pytest.mark.anyio
async def test_a_failed_handler_logs_its_wake_subscription_generation_and_runner(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeServer()
    fake.subscribe("s", ["jobs/a"], "wake/r1")

    async def handler(claim: Claim) -> None:
        raise RuntimeError("poison")

    runner = Runner(
        "http://fake",
        runner_id="r1",
        handler=handler,
        wake_stream="wake/r1",
        grace=0.5,
        clock=ManualClock(),
        settings=RunnerSettings(heartbeat_interval=100.0, stop_bound=0.5),
        transport=fake.transport(),
        rng=random.Random(3),
    )
    caplog.set_level(logging.INFO, logger="pullwake")
    with anyio.fail_after(10):
        async with runner:
            await runner.wait_state("streaming")
            fake.append("jobs/a", "bad")
            await wait_until(lambda: runner.statistics().claims.releases == 1, timeout=5)
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    failed = [e for e in lines if e["logger"] == "pullwake.claims" and "failed" in e["message"]]
    assert len(failed) == 1
    entry = failed[0]
    assert entry["level"] == "WARNING"
    assert entry["subscription"] == "s"
    assert entry["runner_id"] == "r1"
    assert entry["generation"] >= 1
    assert entry["wake_id"]
    assert "RuntimeError: poison" in entry["exc"]
    released = [e for e in lines if e["message"].startswith("released ")]
    assert [e["wake_id"] for e in released] == [entry["wake_id"]]
    transitions = [e for e in lines if e["logger"] == "pullwake.runner"]
    assert transitions
    assert all(e["runner_id"] == "r1" for e in transitions)
