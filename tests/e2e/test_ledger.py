"""The ledger's accounting catches what the e2e tests rely on it to catch.

A checker that cannot fail proves nothing: these tests feed it a lost message, an unexplained
duplicate, a duplicate a kill explains, and a torn file, and check its verdicts. They also run
the handler the runner processes use against a stand-in claim.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from pullwake.testing.e2e.ledger import (
    HOLD_ENV,
    LEDGER_ENV,
    account,
    handle,
    in_flight,
    read_ledgers,
)


def write(directory: Path, runner: str, pid: int, *claims: dict[str, Any]) -> None:
    """Write claims as the handler would: message lines, then a ``claimed`` marker."""
    with (directory / f"{runner}.{pid}.jsonl").open("a") as out:
        for claim in claims:
            base = {"i": pid, "sub": claim["sub"], "w": claim["w"], "g": claim["g"]}
            for stream, n in claim["messages"]:
                out.write(json.dumps({**base, "k": "m", "s": stream, "n": n}) + "\n")
            marker = {**base, "k": "claimed", "count": len(claim["messages"]), "t": claim["t"]}
            out.write(json.dumps(marker) + "\n")
            if claim.get("returned"):
                out.write(json.dumps({**base, "k": "returned", "t": claim["t"] + 0.1}) + "\n")


def claim(sub: str, gen: int, t: float, *messages: tuple[str, int], returned: bool = True) -> Any:
    return {
        "sub": sub,
        "w": f"w{gen}",
        "g": gen,
        "t": t,
        "messages": messages,
        "returned": returned,
    }


def test_everything_handled_once_is_clean(tmp_path: Path) -> None:
    write(tmp_path, "r1", 10, claim("a", 1, 1.0, ("s", 1), ("s", 2)), claim("a", 2, 2.0, ("s", 3)))
    result = account({("s", 1), ("s", 2), ("s", 3)}, read_ledgers(tmp_path), killed=[])
    assert result.problems() == []
    assert result.summary() == {
        "produced": 3,
        "handled": 3,
        "lost": 0,
        "duplicates": 0,
        "explained": 0,
        "unexplained": 0,
    }


def test_a_message_no_ledger_holds_is_lost(tmp_path: Path) -> None:
    write(tmp_path, "r1", 10, claim("a", 1, 1.0, ("s", 1)))
    result = account({("s", 1), ("s", 2)}, read_ledgers(tmp_path), killed=[])
    assert result.lost == (("s", 2),)
    assert "1 message(s) lost" in result.problems()[0]


def test_a_duplicate_without_a_kill_is_unexplained(tmp_path: Path) -> None:
    write(tmp_path, "r1", 10, claim("a", 1, 1.0, ("s", 1)), claim("a", 2, 2.0, ("s", 1)))
    result = account({("s", 1)}, read_ledgers(tmp_path), killed=[])
    assert (result.duplicates, result.explained, len(result.unexplained)) == (1, 0, 1)
    assert "unexplained duplicate" in result.problems()[0]


def test_the_last_claim_of_a_killed_instance_explains_its_redo(tmp_path: Path) -> None:
    # Instance 10 recorded two claims of "a", then was killed before acking the second; the
    # next instance (11) did the second one's work again.
    write(
        tmp_path,
        "r1",
        10,
        claim("a", 1, 1.0, ("s", 1)),
        claim("a", 2, 2.0, ("s", 2), ("s", 3), returned=False),
    )
    write(tmp_path, "r1", 11, claim("a", 3, 9.0, ("s", 2), ("s", 3), ("s", 4)))
    result = account({("s", 1), ("s", 2), ("s", 3), ("s", 4)}, read_ledgers(tmp_path), [10])
    assert result.problems() == []
    assert (result.duplicates, result.explained) == (2, 2)


def test_a_kill_explains_only_the_last_claim_of_each_subscription(tmp_path: Path) -> None:
    # Claim 1 was followed by claim 2 on the same subscription, so claim 1 was finished: its
    # messages done again cannot be blamed on the later kill.
    write(
        tmp_path,
        "r1",
        10,
        claim("a", 1, 1.0, ("s", 1)),
        claim("a", 2, 2.0, ("s", 2)),
    )
    write(tmp_path, "r1", 11, claim("a", 3, 9.0, ("s", 1), ("s", 2)))
    result = account({("s", 1), ("s", 2)}, read_ledgers(tmp_path), killed=[10])
    assert (result.duplicates, result.explained) == (2, 1)
    assert [key for key, _ in result.unexplained] == [("s", 1)]


def test_a_torn_line_and_an_unmarked_claim_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "r1", 10, claim("a", 1, 1.0, ("s", 1)))
    with (tmp_path / "r1.10.jsonl").open("a") as out:
        out.write(json.dumps({"i": 10, "sub": "a", "w": "w2", "g": 2, "k": "m", "s": "s", "n": 2}))
        out.write('\n{"i": 10, "k": "clai')
    claims = read_ledgers(tmp_path)
    assert [c.messages for c in claims] == [(("s", 1),)]


def test_messages_the_producer_never_confirmed_are_reported(tmp_path: Path) -> None:
    write(tmp_path, "r1", 10, claim("a", 1, 1.0, ("s", 1), ("t", 7)))
    result = account({("s", 1)}, read_ledgers(tmp_path), killed=[])
    assert result.unexpected == (("t", 7),)
    assert result.problems()


@attrs.frozen
class FakeStream:
    path: str


class FakeClaim:
    """The parts of :class:`~pullwake.runtime.claims.Claim` the handler uses."""

    subscription_id = "a"
    wake_id = "w1"
    generation = 4

    def __init__(self, messages: dict[str, list[Any]]) -> None:
        self._messages = messages
        self.pending_streams = tuple(FakeStream(path) for path in messages)

    async def messages(self, path: str) -> AsyncIterator[Any]:
        for message in self._messages[path]:
            yield message


@pytest.mark.anyio
async def test_the_handler_records_a_claim_then_holds_then_says_it_returned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    monkeypatch.setenv(LEDGER_ENV, str(tmp_path))
    monkeypatch.setenv(HOLD_ENV, "0.01")
    monkeypatch.setenv("PULLWAKE_E2E_RUNNER", "r9")
    fake = FakeClaim({"s/0": [{"s": "s/0", "n": 1}, {"s": "s/0", "n": 2}], "s/1": []})
    await handle(fake)  # type: ignore[arg-type]
    (claimed,) = read_ledgers(tmp_path)
    assert claimed.runner == "r9"
    assert (claimed.subscription, claimed.wake_id, claimed.generation) == ("a", "w1", 4)
    assert claimed.messages == (("s/0", 1), ("s/0", 2))
    assert claimed.returned
    assert in_flight([claimed], claimed.instance) is None


@pytest.mark.anyio
async def test_the_handler_refuses_a_message_the_harness_did_not_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    monkeypatch.setenv(LEDGER_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="not a harness message"):
        await handle(FakeClaim({"s/0": ["stray"]}))  # type: ignore[arg-type]
    assert read_ledgers(tmp_path) == []


def test_a_message_appended_twice_must_be_handled_twice(tmp_path: Path) -> None:
    # The producer's first append of ("s", 1) committed late, after its retry: two copies.
    write(tmp_path, "r1", 10, claim("a", 1, 1.0, ("s", 1), ("s", 2), ("s", 1)))
    twice = {("s", 1): 2, ("s", 2): 1}
    result = account({("s", 1), ("s", 2)}, read_ledgers(tmp_path), [], contents=twice)
    assert result.problems() == []
    assert result.duplicates == 0
    write(tmp_path, "r1", 11, claim("a", 2, 2.0, ("s", 1)))
    result = account({("s", 1), ("s", 2)}, read_ledgers(tmp_path), [], contents=twice)
    assert (result.duplicates, len(result.unexplained)) == (1, 1)


def test_one_copy_of_two_handled_is_a_lost_message(tmp_path: Path) -> None:
    write(tmp_path, "r1", 10, claim("a", 1, 1.0, ("s", 1)))
    result = account({("s", 1)}, read_ledgers(tmp_path), [], contents={("s", 1): 2})
    assert result.lost == (("s", 1),)


def test_a_confirmed_append_missing_from_its_stream_is_reported(tmp_path: Path) -> None:
    write(tmp_path, "r1", 10, claim("a", 1, 1.0, ("s", 1)))
    result = account({("s", 1), ("s", 2)}, read_ledgers(tmp_path), [], contents={("s", 1): 1})
    assert result.missing == (("s", 2),)
    assert "missing from their streams" in result.problems()[0]
