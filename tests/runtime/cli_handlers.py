"""Handlers that ``pullwake run`` subprocesses in the CLI tests import by name."""

from __future__ import annotations

import json
import os

import anyio

from pullwake.runtime import Claim


async def record(claim: Claim) -> None:
    """Append every claimed message, as a JSON line, to ``$PULLWAKE_TEST_OUT``."""
    lines = []
    for stream in claim.pending_streams:
        async for message in claim.messages(stream.path):
            lines.append(json.dumps(message) + "\n")
    async with await anyio.open_file(os.environ["PULLWAKE_TEST_OUT"], "a") as out:
        await out.write("".join(lines))


async def stubborn(claim: Claim) -> None:
    """Ignore cancellation (for the bounded-stop test): never return on its own."""
    with anyio.CancelScope(shield=True):
        await anyio.sleep(3600)


not_callable = 42


async def slow(claim: Claim) -> None:
    """Run for an hour unless cancelled (for the forced-stop test); record that it started."""
    async with await anyio.open_file(os.environ["PULLWAKE_TEST_OUT"], "a") as out:
        await out.write("started\n")
    await anyio.sleep(3600)
