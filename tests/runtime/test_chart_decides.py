"""The chart alone decides the runner's reaction to every failure: no lifecycle flag outside it.

Two checks:

- A table, failure kind -> the event the activity chose -> the resulting configuration, run
  against the real runner (fake server, manual clock). Each row also checks that the resulting
  configuration is what ``LIFECYCLE.decide`` says for that event in that configuration: the
  runner's reaction follows from the event alone, with nothing else consulted.
- An AST walk over ``runtime/*.py`` (the actor excepted: it holds the chart's configuration)
  refusing lifecycle notes kept on the side; see :func:`lifecycle_notes` for what it catches
  and what it cannot.
"""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from pullwake.machines import LIFECYCLE
from pullwake.runtime import Claim, Runner, RunnerSettings
from pullwake.runtime.actor import TransitionRecord
from pullwake.runtime.backoff import Backoff
from pullwake.runtime.clock import ManualClock
from pullwake.runtime.errors import Rejected, ServerUnreachable

from .fakeserver import FakeServer
from .waiting import wait_until

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"
HEARTBEAT = 100.0

GONE = ("running", "reconnecting", "server_gone")
AFTER_ANSWER = ("running", "reconnecting", "after_answer")


async def fail_connect(fake: FakeServer, clock: ManualClock, answer: int | Exception) -> None:
    fake.fail("sse", answer)


async def beat_failing(fake: FakeServer, clock: ManualClock, *answers: int) -> None:
    """Make the next heartbeats answer ``answers``, one heartbeat interval each, no more."""
    fake.fail("heartbeat", *answers)
    for _ in answers:
        beats = fake.count("heartbeat")
        await clock.wait_sleepers(1)
        await anyio.wait_all_tasks_blocked()
        clock.advance(HEARTBEAT)
        await wait_until(lambda: fake.count("heartbeat") > beats, timeout=5)  # noqa: B023


async def hang_connect(fake: FakeServer, clock: ManualClock) -> None:
    fake.hang("sse")
    # The connect hangs after the run's first beat went through.
    await wait_until(lambda: fake.count("sse") == 1 and fake.count("heartbeat") == 1, timeout=5)
    await beat_failing(fake, clock, 503, 503)


async def end_stream(fake: FakeServer, clock: ManualClock) -> None:
    await wait_until(lambda: fake.sse_open == 1, timeout=5)
    fake.end_sse()


async def break_stream(fake: FakeServer, clock: ManualClock) -> None:
    await wait_until(lambda: fake.sse_open == 1, timeout=5)
    fake.go_down()


async def fail_heartbeats(fake: FakeServer, clock: ManualClock, *answers: int) -> None:
    # Streaming, and the beat that reports it (the read activity asks for one) went through.
    await wait_until(
        lambda: any(b["diagnostics"]["status"] == "streaming" for b in fake.heartbeats),
        timeout=5,
    )
    await beat_failing(fake, clock, *answers)


Setup = Callable[[FakeServer, ManualClock], Any]

#: failure kind -> (how to cause it, the source leaf, the event, the resulting configuration)
FAILURES: dict[str, tuple[Setup, str, str, tuple[str, ...]]] = {
    "connect: 401": (lambda f, c: fail_connect(f, c, 401), "connecting", "rejected", ("stopping",)),
    "connect: 403": (lambda f, c: fail_connect(f, c, 403), "connecting", "rejected", ("stopping",)),
    "connect: 400": (
        lambda f, c: fail_connect(f, c, 400),
        "connecting",
        "connect_failed",
        AFTER_ANSWER,
    ),
    "connect: 404": (
        lambda f, c: fail_connect(f, c, 404),
        "connecting",
        "connect_failed",
        AFTER_ANSWER,
    ),
    "connect: 503": (
        lambda f, c: fail_connect(f, c, 503),
        "connecting",
        "connect_failed",
        AFTER_ANSWER,
    ),
    "connect: refused": (
        lambda f, c: fail_connect(f, c, httpx.ConnectError("connection refused")),
        "connecting",
        "server_lost",
        GONE,
    ),
    "connect: timed out": (
        lambda f, c: fail_connect(f, c, httpx.ConnectTimeout("timed out")),
        "connecting",
        "server_lost",
        GONE,
    ),
    "connect: hangs while heartbeats fail": (hang_connect, "connecting", "stream_reset", GONE),
    "stream: clean end": (end_stream, "streaming", "stream_ended", AFTER_ANSWER),
    "stream: connection reset": (break_stream, "streaming", "server_lost", GONE),
    "heartbeat: two failures": (
        lambda f, c: fail_heartbeats(f, c, 503, 503),
        "streaming",
        "stream_reset",
        GONE,
    ),
    "heartbeat: 401": (
        lambda f, c: fail_heartbeats(f, c, 401),
        "streaming",
        "rejected",
        ("stopping",),
    ),
}


def new_fake() -> FakeServer:
    fake = FakeServer()
    fake.subscribe("s", ["jobs/a"], "wake/r1")
    return fake


async def ignore(claim: Claim) -> None:
    """A handler that does nothing: these tests are about the connection, not the work."""


def make_runner(fake: FakeServer, clock: ManualClock, records: list[TransitionRecord]) -> Runner:
    return Runner(
        "http://fake",
        runner_id="r1",
        handler=ignore,
        wake_stream="wake/r1",
        grace=0.5,
        clock=clock,
        settings=RunnerSettings(
            heartbeat_interval=HEARTBEAT,
            backoff=Backoff(initial=1000.0, maximum=1000.0),
            stop_bound=0.5,
        ),
        transport=fake.transport(),
        inspect=records.append,
        rng=random.Random(3),
    )


@pytest.mark.anyio
@pytest.mark.parametrize("kind", list(FAILURES))
async def test_each_failure_kind_is_one_event_and_the_chart_decides_the_rest(
    anyio_backend: str, kind: str
) -> None:
    cause, source, event, configuration = FAILURES[kind]
    fake = new_fake()
    clock = ManualClock()
    records: list[TransitionRecord] = []

    def left(leaf: str) -> list[TransitionRecord]:
        return [r for r in records if r.kind == "transition" and r.source[-1] == leaf]

    async def observe(runner: Runner) -> TransitionRecord:
        await cause(fake, clock)
        await wait_until(lambda: bool(left(source)) and left(source)[-1].event != "connected")
        record = left(source)[-1]
        await anyio.wait_all_tasks_blocked()
        assert runner.configuration == record.target
        # What runs is exactly what the configuration owns.
        assert sorted(runner.open_activities()) == sorted(LIFECYCLE.activities_of(record.target))
        return record

    with anyio.fail_after(10):
        runner = make_runner(fake, clock, records)
        if event == "rejected":
            # A refusal ends the run for good, and so the block around it (raising on exit).

            async def block() -> None:
                async with runner:
                    await cause(fake, clock)
                    await anyio.sleep_forever()

            with pytest.raises(Rejected):
                await block()
            (record,) = left(source)
        else:
            async with runner:
                record = await observe(runner)
    assert (record.event, record.target) == (event, configuration)
    # The reaction is the chart's decision for that event, nothing else.
    assert LIFECYCLE.decide(record.source, event).configuration == configuration
    if event in ("rejected", "server_lost"):
        # The failure travelled with its event, into the record.
        expected = Rejected if event == "rejected" else ServerUnreachable
        assert isinstance(record.error, expected)


@pytest.mark.anyio
async def test_failing_heartbeats_after_an_answer_start_the_probe_and_keep_the_backoff(
    anyio_backend: str,
) -> None:
    fake = new_fake()
    clock = ManualClock()
    records: list[TransitionRecord] = []
    with anyio.fail_after(10):
        async with make_runner(fake, clock, records) as runner:
            fake.fail("sse", 503)
            await runner.wait_state("after_answer")
            await wait_until(lambda: fake.count("heartbeat") == 1, timeout=5)
            # Two heartbeat intervals; the backoff (500 s to 1000 s) sleeps on.
            await beat_failing(fake, clock, 503, 503)
            await runner.wait_state("server_gone")
            (moved,) = [r for r in records if r.source[-1] == "after_answer"]
            assert (moved.event, moved.cancelled, moved.started) == ("stream_reset", (), ("probe",))
            # The same backoff goes on: it was neither cancelled nor started again.
            assert "backoff" in runner.open_activities()
            assert [r.started for r in records if "backoff" in r.started] == [("backoff",)]
            assert not any(r.event == "backoff_elapsed" for r in records)
            # The server answers again: the probe's first exchange cuts the backoff short.
            await clock.wait_sleepers(3)  # heartbeat, backoff, probe
            clock.advance(0.5)
            await runner.wait_state("streaming")
    steps = [(r.source[-1], r.event, r.target[-1]) for r in records if r.kind == "transition"]
    assert ("server_gone", "server_reachable", "connecting") in steps
    assert not any(event == "backoff_elapsed" for _, event, _ in steps)
    assert clock.now() < 500.0  # the shortest backoff this runner could have drawn


# -- no lifecycle notes outside the chart -------------------------------------------------

#: Words that name the lifecycle: its states, its events, and the words of the flags the
#: runner used to keep on the side (``waiting_for_server``, ``server_unreachable``).
LIFECYCLE_WORDS = sorted(
    {*LIFECYCLE.states(), *LIFECYCLE.events(), "unreachable", "waiting", "lost", "gone"}
)
#: Names that match the words above but are no lifecycle note, and why.
NOT_NOTES = {
    # The pipeline's own close mode (the grace period is over), not a state of the chart.
    ("claims.py", "_hard_stop"),
    # The runner's report to the server (what heartbeats carry): a copy of the chart's leaf
    # written by the inspect hook, and whether a stream is open; nothing reads them to decide.
    ("diagnostics.py", "status"),
    ("diagnostics.py", "stream_connected"),
}
_WORD = re.compile(rf"(^|_)({'|'.join(map(re.escape, LIFECYCLE_WORDS))})(_|$)")


def _target_names(node: ast.AST) -> list[str]:
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = list(node.targets)
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        targets = [node.target]
    names = []
    for target in targets:
        if isinstance(target, ast.Attribute):
            names.append(target.attr)
        elif isinstance(target, ast.Name):
            names.append(target.id)
    return names


def _is_lifecycle_literal(node: ast.AST | None) -> bool:
    """True for a string literal that is a state or event id of the lifecycle."""
    return isinstance(node, ast.Constant) and node.value in {
        *LIFECYCLE.states(),
        *LIFECYCLE.events(),
    }


def _compares_to_the_lifecycle(node: ast.AST | None) -> bool:
    if node is None:
        return False
    return any(
        isinstance(sub, ast.Compare)
        and any(_is_lifecycle_literal(c) for c in [sub.left, *sub.comparators])
        for sub in ast.walk(node)
    )


def lifecycle_notes(source: str, module: str = "") -> list[str]:
    """Return the assignments in ``source`` that keep a lifecycle note outside the chart.

    It catches four shapes: a boolean literal assigned to a name that mentions a lifecycle
    word (``self.server_unreachable = False``); a state or event id assigned as a string
    literal (``self.phase = "reconnecting"``); a value computed by comparing something with a
    state or event id, assigned (``self.lost = event == "stream_reset"``) or returned (a
    property ``waiting_for_server`` returning ``self.state == "reconnecting"``). It cannot see
    a note kept under an unrelated name without such a comparison, in a container, or counted
    from events; reading the chart's state where it is needed (``if actor.state ==
    "stopping":``) is allowed, as that stores nothing.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Return) and _compares_to_the_lifecycle(node.value):
            found.append(f"line {node.lineno}: returns a comparison with a lifecycle id")
            continue
        if not isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            continue
        value = node.value
        for name in _target_names(node):
            if (module, name) in NOT_NOTES:
                continue
            if (
                isinstance(value, ast.Constant)
                and isinstance(value.value, bool)
                and _WORD.search(name)
            ):
                found.append(f"line {node.lineno}: {name} = {value.value!r}")
            elif _is_lifecycle_literal(value):
                found.append(f"line {node.lineno}: {name} = a lifecycle id")
            elif _compares_to_the_lifecycle(value):
                found.append(f"line {node.lineno}: {name} = a comparison with a lifecycle id")
    return found


def test_the_check_catches_the_flags_the_runner_used_to_keep() -> None:
    planted = """
class Session:
    def __init__(self):
        self.server_unreachable = False
        self.phase = "reconnecting"

    def stream_lost(self, event):
        self.waiting_for_server = self.runner.state == "reconnecting"
"""
    assert len(lifecycle_notes(planted)) == 3
    # Reading the chart's state in a condition stores nothing.
    assert lifecycle_notes("if actor.state == 'stopping':\n    pass\n") == []


@pytest.mark.parametrize(
    "module", sorted(p.name for p in RUNTIME.glob("*.py") if p.name != "actor.py")
)
def test_no_runtime_module_keeps_lifecycle_notes(module: str) -> None:
    assert lifecycle_notes((RUNTIME / module).read_text(), module) == []
