"""``pullwake.testing`` itself, and the JSON-lines transitions log the runner writes for it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from pullwake.runtime import SubscriptionSpec
from pullwake.runtime.actor import TransitionRecord
from pullwake.runtime.cli import add_arguments
from pullwake.runtime.transitions_log import TransitionsLog, read_transitions
from pullwake.testing import (
    AdminClient,
    RunnerProcess,
    ToolMissing,
    subscription_body,
    throwaway_postgres,
    wait_until,
)
from tests.fixtures.servers import ServerFactory

REPO = Path(__file__).resolve().parents[2]

RECORD = TransitionRecord(
    kind="transition",
    event="connected",
    source=("connecting",),
    target=("streaming",),
    started=("read_stream",),
    cancelled=("connect",),
    reason="",
    origin="connect",
    error=None,
    at=12.5,
)


# -- the transitions log -------------------------------------------------------------------


def test_each_record_is_one_json_line_flushed_at_once(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "transitions.jsonl"
    with TransitionsLog(path) as log:
        log(RECORD)
        # Flushed before the file is closed: a SIGKILLed runner leaves every line it wrote.
        line = json.loads(path.read_text().splitlines()[0])
        log(TransitionRecord("ignored", "stream_reset", ("reconnecting",), ("reconnecting",)))
    assert line["time"] > 0
    assert {k: v for k, v in line.items() if k != "time"} == {
        "at": 12.5,
        "kind": "transition",
        "event": "connected",
        "source": ["connecting"],
        "target": ["streaming"],
        "started": ["read_stream"],
        "cancelled": ["connect"],
        "reason": "",
        "origin": "connect",
        "error": None,
        "leaked": [],
    }
    read = list(read_transitions(path))
    assert [(t.kind, t.event, t.source, t.target) for t in read] == [
        ("transition", "connected", ("connecting",), ("streaming",)),
        ("ignored", "stream_reset", ("reconnecting",), ("reconnecting",)),
    ]


def test_a_torn_last_line_is_skipped_and_a_missing_log_reads_empty(tmp_path: Path) -> None:
    path = tmp_path / "transitions.jsonl"
    assert list(read_transitions(path)) == []
    with TransitionsLog(path) as log:
        log(RECORD)
    with path.open("a") as file:
        file.write('{"time": 1.0, "kind": "transi')
    assert [t.event for t in read_transitions(path)] == ["connected"]


def test_errors_are_written_as_their_repr(tmp_path: Path) -> None:
    path = tmp_path / "transitions.jsonl"
    failed = TransitionRecord("failed", None, ("streaming",), ("streaming",), error=OSError(5))
    with TransitionsLog(path) as log:
        log(failed)
    assert [t.error for t in read_transitions(path)] == ["OSError(5)"]


def test_a_closed_log_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "transitions.jsonl"
    log = TransitionsLog(path)
    log(RECORD)
    log.open().close()
    log(RECORD)
    assert path.read_text() == ""


def run_options(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["m:h", "--url", "http://127.0.0.1:1", "--runner-id", "r", *extra])


def test_the_transitions_log_comes_from_the_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PULLWAKE_TRANSITIONS_LOG", raising=False)
    assert run_options().transitions_log is None
    assert run_options("--transitions-log", "a.jsonl").transitions_log == "a.jsonl"
    monkeypatch.setenv("PULLWAKE_TRANSITIONS_LOG", "env.jsonl")
    assert run_options().transitions_log == "env.jsonl"
    assert run_options("--transitions-log", "a.jsonl").transitions_log == "a.jsonl"


# -- the launchers and the client ----------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_runner_process_reports_its_lifecycle_through_the_json_log(
    server_factory: ServerFactory, tmp_path: Path, anyio_backend: str
) -> None:
    server = server_factory(args=["--keepalive", "0.3"])
    out = tmp_path / "handled.jsonl"
    runner = RunnerProcess(
        "tests.runtime.cli_handlers:record",
        [server.url],
        runner_id="r1",
        log_dir=tmp_path,
        backend=anyio_backend,
        args=["--wake-stream", "wake/r1", "--heartbeat-interval", "0.3"],
        env={"PULLWAKE_TEST_OUT": str(out)},
        cwd=REPO,
    )
    async with AdminClient(server.url) as admin:
        await admin.create_stream("wake/r1")
        await admin.create_stream("jobs/a")
        view = await admin.put_subscription(SubscriptionSpec("s", streams=("jobs/a",)), "wake/r1")
        assert (view["wake_stream"], [s["path"] for s in view["streams"]]) == (
            "wake/r1",
            ["jobs/a"],
        )
        runner.start()
        try:
            await wait_until(
                lambda: runner.state() == "streaming", timeout=20, message="runner streaming"
            )
            await admin.append("jobs/a", {"n": 1})
            await wait_until(
                lambda: out.exists() and bool(out.read_text()),
                timeout=20,
                message="the message handled",
            )
            status = await anyio.to_thread.run_sync(runner.terminate)
        finally:
            await anyio.to_thread.run_sync(runner.close)
        assert [json.loads(line) for line in out.read_text().splitlines()] == [{"n": 1}]
        assert await admin.read_all("jobs/a") == [{"n": 1}]
    assert status == 0, runner.log_text()
    steps = runner.transitions()
    assert ("connecting", "connected", "streaming") in [
        (s.source[-1], s.event, s.target[-1]) for s in steps
    ]
    assert runner.state() == "stopped"
    assert [s.time for s in steps] == sorted(s.time for s in steps)
    assert [i.ended for i in runner.instances] == ["stopped"]


@pytest.mark.anyio
async def test_wait_until_polls_plain_and_async_predicates_and_says_what_it_waited_for(
    anyio_backend: str,
) -> None:
    calls = []

    def third_time() -> bool:
        calls.append(1)
        return len(calls) >= 3

    async def ready() -> bool:
        await anyio.lowlevel.checkpoint()
        return True

    with anyio.fail_after(5):
        await wait_until(third_time, timeout=2, interval=0.001)
        await wait_until(ready, timeout=2)
        with pytest.raises(TimeoutError, match=r"the moon still false after 0\.05 s"):
            await wait_until(lambda: False, timeout=0.05, interval=0.01, message="the moon")
    assert len(calls) == 3


def test_subscription_bodies_come_from_the_spec() -> None:
    spec = SubscriptionSpec("s", pattern="jobs/*", lease_ttl_ms=5000)
    assert subscription_body(spec, "wake/r") == {
        "type": "pull-wake",
        "wake_stream": "wake/r",
        "pattern": "jobs/*",
        "lease_ttl_ms": 5000,
    }
    own = SubscriptionSpec("t", streams=("a",), wake_stream="wake/own")
    assert subscription_body(own, "wake/r")["wake_stream"] == "wake/own"
    with pytest.raises(ValueError, match="names no wake stream"):
        subscription_body(spec)


@pytest.mark.postgres
def test_a_throwaway_postgres_is_removed_at_exit() -> None:
    try:
        with throwaway_postgres() as cluster:
            root = cluster.root
            dsn = cluster.create_database("probe")
            assert dsn.endswith("/probe")
            assert cluster.running
            assert root.exists()
    except ToolMissing as exc:
        pytest.fail(str(exc))
    assert not root.exists()
