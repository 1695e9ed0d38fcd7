"""Record every handled message durably, and count what was lost or done twice.

Theory of operation
-------------------
Runner processes started by the harness run :func:`handle` (``pullwake run
tests.e2e.ledger:handle``). For each claim it reads every claimed message, then writes one line
per message plus one ``claimed`` marker to the runner instance's own ledger file
(``$PULLWAKE_E2E_LEDGER/<runner id>.<pid>.jsonl``) in a **single** ``write`` followed by
``fsync``. A SIGKILL therefore leaves either the whole claim in the ledger or none of it. If
``$PULLWAKE_E2E_HOLD`` is set, the handler then waits that many seconds before it writes a
``returned`` marker and returns (the runner acks ``done`` after that): the window in which a
"runner killed mid-handler" fault lands.

So a claim's messages are recorded before its ``done`` ack, never after: a message the
server counts as handled is always in the ledger (nothing is lost unseen), and a message can be
recorded twice only if a recorded claim was never acked. The harness reads the ledgers with
:func:`read_ledgers` and judges them with :func:`account`:

- **lost**: a copy of a message in a stream that no ledger holds (the streams are read back at
  the end; a confirmed append missing from its stream is reported apart, as lost by the
  server);
- **duplicate**: a message recorded more often than it has copies in its stream. Each extra
  recording is **explained** only if an earlier one belongs to the *last* claim, on that
  subscription, of a runner instance the harness SIGKILLed: the one claim whose ``done`` ack
  that kill may have prevented. Any other duplicate is unexplained (a defect, or a fault longer
  than the lease).

A message normally has one copy. It has two when an append the producer got no answer to
committed only after the producer, having checked the stream, appended it again (a request
stuck in a server waiting for its database outlives the client's timeout): two messages,
each to be handled once.

Messages are JSON objects ``{"s": stream, "n": sequence number}``; the pair identifies one
message, whatever offset it landed at.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import anyio
import attrs

from pullwake.runtime import Claim

LEDGER_ENV = "PULLWAKE_E2E_LEDGER"
HOLD_ENV = "PULLWAKE_E2E_HOLD"

MessageKey = tuple[str, int]


# -- the runner side ------------------------------------------------------------------------


def _append_durably(path: str, data: bytes) -> None:
    """Append ``data`` with one ``write`` and ``fsync`` it (runs in a worker thread)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write to {path}: {written} of {len(data)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def _ledger_path() -> str:
    runner_id = os.environ.get("PULLWAKE_E2E_RUNNER", "runner")
    return os.path.join(os.environ[LEDGER_ENV], f"{runner_id}.{os.getpid()}.jsonl")


async def handle(claim: Claim) -> None:
    """Record every claimed message in this instance's ledger, then (maybe) hold, then return."""
    base = {
        "i": os.getpid(),
        "sub": claim.subscription_id,
        "w": claim.wake_id,
        "g": claim.generation,
    }
    lines = []
    for stream in claim.pending_streams:
        async with contextlib.aclosing(claim.messages(stream.path)) as messages:
            async for message in messages:
                if not isinstance(message, dict) or "n" not in message:
                    raise ValueError(f"not a harness message on {stream.path!r}: {message!r}")
                lines.append({**base, "k": "m", "s": stream.path, "n": message["n"]})
    now = time.time()
    lines.append({**base, "k": "claimed", "count": len(lines), "t": now})
    data = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()
    path = _ledger_path()
    await anyio.to_thread.run_sync(_append_durably, path, data)
    hold = float(os.environ.get(HOLD_ENV) or 0)
    if hold > 0:
        await anyio.sleep(hold)
        marker = {**base, "k": "returned", "t": time.time()}
        line = (json.dumps(marker, separators=(",", ":")) + "\n").encode()
        await anyio.to_thread.run_sync(_append_durably, path, line)


# -- the harness side -----------------------------------------------------------------------


@attrs.frozen
class ClaimRecord:
    """One claim a runner instance recorded: its messages and when."""

    runner: str
    instance: int
    subscription: str
    wake_id: str
    generation: int
    recorded_at: float
    messages: tuple[MessageKey, ...]
    returned: bool


def read_ledgers(directory: Path) -> list[ClaimRecord]:
    """Read every ledger file in ``directory``; return the claims in recording order.

    A torn last line (impossible with one ``write`` per claim, but cheap to tolerate) is
    ignored, and so are messages whose ``claimed`` marker is missing.
    """
    claims: list[ClaimRecord] = []
    for path in sorted(directory.glob("*.jsonl")):
        runner = path.name.split(".", 1)[0]
        pending: list[MessageKey] = []
        returned: set[tuple[str, str, int]] = set()
        found: list[ClaimRecord] = []
        for raw in path.read_bytes().splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            kind = line.get("k")
            if kind == "m":
                pending.append((line["s"], int(line["n"])))
            elif kind == "claimed":
                found.append(
                    ClaimRecord(
                        runner=runner,
                        instance=int(line["i"]),
                        subscription=line["sub"],
                        wake_id=line["w"],
                        generation=int(line["g"]),
                        recorded_at=float(line["t"]),
                        messages=tuple(pending),
                        returned=False,
                    )
                )
                pending = []
            elif kind == "returned":
                returned.add((line["sub"], line["w"], int(line["g"])))
        claims.extend(
            attrs.evolve(c, returned=(c.subscription, c.wake_id, c.generation) in returned)
            for c in found
        )
    claims.sort(key=lambda c: c.recorded_at)
    return claims


def handled_keys(claims: Iterable[ClaimRecord]) -> set[MessageKey]:
    """Return every message recorded at least once."""
    return {key for claim in claims for key in claim.messages}


@attrs.frozen
class Accounting:
    """What the ledgers say about a run, against what the streams hold."""

    produced: int
    handled: int
    #: Copies in the streams that no ledger holds (a message in a stream twice, because an
    #: append the producer had given up on committed late, must be handled twice).
    lost: tuple[MessageKey, ...]
    #: Recordings beyond the copies in the streams (k recordings of one copy count k - 1).
    duplicates: int
    #: Of those, how many the last claim of a SIGKILLed instance explains.
    explained: int
    #: The unexplained ones: (message, the claims that recorded it).
    unexplained: tuple[tuple[MessageKey, tuple[ClaimRecord, ...]], ...]
    #: Recorded messages that are in no stream (a stray stream, or a harness bug).
    unexpected: tuple[MessageKey, ...]
    #: Appends the server confirmed that are not in their stream: lost by the server.
    missing: tuple[MessageKey, ...] = ()

    def problems(self) -> list[str]:
        """Describe every violated invariant (empty when lost = 0 and duplicates are explained)."""
        found = []
        if self.missing:
            found.append(
                f"{len(self.missing)} confirmed append(s) missing from their streams, e.g. "
                f"{list(self.missing[:10])}"
            )
        if self.lost:
            found.append(f"{len(self.lost)} message(s) lost, e.g. {list(self.lost[:10])}")
        if self.unexplained:
            examples = [
                f"{key} recorded by "
                + ", ".join(
                    f"{c.runner}/{c.instance} {c.subscription} gen {c.generation}" for c in claims
                )
                for key, claims in self.unexplained[:5]
            ]
            found.append(
                f"{len(self.unexplained)} unexplained duplicate(s): " + "; ".join(examples)
            )
        if self.unexpected:
            found.append(f"{len(self.unexpected)} unexpected message(s): {self.unexpected[:10]}")
        return found

    def summary(self) -> dict[str, Any]:
        return {
            "produced": self.produced,
            "handled": self.handled,
            "lost": len(self.lost),
            "duplicates": self.duplicates,
            "explained": self.explained,
            "unexplained": len(self.unexplained),
        }


def last_claims_of(
    claims: Iterable[ClaimRecord], instances: Iterable[int]
) -> set[tuple[int, str, str, int]]:
    """Return, per (instance, subscription), the identity of that instance's last claim."""
    wanted = set(instances)
    last: dict[tuple[int, str], ClaimRecord] = {}
    for claim in claims:
        if claim.instance not in wanted:
            continue
        key = (claim.instance, claim.subscription)
        if key not in last or claim.recorded_at >= last[key].recorded_at:
            last[key] = claim
    return {(c.instance, c.subscription, c.wake_id, c.generation) for c in last.values()}


def account(
    produced: Iterable[MessageKey],
    claims: Iterable[ClaimRecord],
    killed: Iterable[int],
    contents: Mapping[MessageKey, int] | None = None,
) -> Accounting:
    """Judge the ledgers: lost messages, and duplicates with their explanations.

    ``killed`` holds the pids of the runner instances the harness SIGKILLed. ``contents``
    counts each message's copies in the streams, read back at the end (default: one copy of
    each produced message). A copy beyond the first exists when an append the producer gave
    up on (no answer) committed after its retry did: it is a message of its own, to be handled
    once more, not a duplicate of the handler.
    """
    produced_set = set(produced)
    copies: Mapping[MessageKey, int] = (
        contents if contents is not None else dict.fromkeys(produced_set, 1)
    )
    ordered = sorted(claims, key=lambda c: c.recorded_at)
    excusable = last_claims_of(ordered, killed)
    seen: dict[MessageKey, list[ClaimRecord]] = defaultdict(list)
    for claim in ordered:
        for key in claim.messages:
            seen[key].append(claim)
    duplicates = explained = 0
    unexplained = []
    lost = []
    for key, count in copies.items():
        if len(seen.get(key, ())) < count:
            lost.append(key)
    for key, recorders in seen.items():
        allowed = max(1, copies.get(key, 0))
        extra = len(recorders) - allowed
        if extra <= 0:
            continue
        duplicates += extra
        # The recordings that may be blamed: all but the last ``allowed`` ones.
        blamable = [
            c
            for c in recorders[:-allowed]
            if (c.instance, c.subscription, c.wake_id, c.generation) in excusable
        ]
        explained += min(extra, len(blamable))
        if len(blamable) < extra:
            unexplained.append((key, tuple(recorders)))
    return Accounting(
        produced=len(produced_set),
        handled=len(seen.keys() & set(copies)),
        lost=tuple(sorted(lost)),
        duplicates=duplicates,
        explained=explained,
        unexplained=tuple(sorted(unexplained, key=lambda item: item[0])),
        unexpected=tuple(sorted(seen.keys() - set(copies))),
        missing=tuple(sorted(k for k in produced_set if copies.get(k, 0) == 0)),
    )


def in_flight(claims: Iterable[ClaimRecord], instance: int) -> ClaimRecord | None:
    """Return a claim ``instance`` recorded and has not returned from yet (it is holding)."""
    for claim in claims:
        if claim.instance == instance and not claim.returned:
            return claim
    return None


def completion_times(claims: Iterable[ClaimRecord]) -> Mapping[MessageKey, float]:
    """Return when each message was first recorded (wall-clock seconds)."""
    first: dict[MessageKey, float] = {}
    for claim in sorted(claims, key=lambda c: c.recorded_at):
        for key in claim.messages:
            first.setdefault(key, claim.recorded_at)
    return first
