"""One runner against two ``pullwake server`` processes that share one PostgreSQL database.

Every server process on the same database is a full replica: the runner lists both URLs, reads
its wake stream from one of them, and moves to the other when that one dies; nothing is lost,
since everything lives in the database::

    export PULLWAKE_DATABASE=postgresql://user:password@127.0.0.1:5432/pullwake
    pullwake server --port 4437 &
    pullwake server --port 4438 &
    PULLWAKE_URL="http://127.0.0.1:4437 http://127.0.0.1:4438" python examples/two_servers.py
    pullwake stream create invoices/2026 --url http://127.0.0.1:4438
    pullwake stream append invoices/2026 '{"invoice": 1}' --url http://127.0.0.1:4438
    kill %1                                       # the runner carries on with the other one

Environment: ``PULLWAKE_URL`` (the servers, separated by spaces or commas; default
``http://127.0.0.1:4437 http://127.0.0.1:4438``), ``EXAMPLE_MESSAGES`` (stop after that many
messages; the tests use it).
"""

from __future__ import annotations

import os

import anyio

from pullwake.runtime import Claim, Runner, SubscriptionSpec

URLS = os.environ.get("PULLWAKE_URL", "http://127.0.0.1:4437 http://127.0.0.1:4438")
LIMIT = int(os.environ.get("EXAMPLE_MESSAGES", "0"))


async def main() -> None:
    seen: set[str] = set()
    enough = anyio.Event()

    async def handle(claim: Claim) -> None:
        for stream in claim.pending_streams:
            async for message in claim.messages(stream.path):
                # Delivery is at least once (a server dying mid-claim hands the work out
                # again): keep the handler idempotent, here by a key in the message.
                key = str(message)
                if key not in seen:
                    seen.add(key)
                    print(f"{stream.path}: {message}", flush=True)
        if LIMIT and len(seen) >= LIMIT:
            enough.set()

    runner = Runner(
        URLS.replace(",", " ").split(),
        runner_id="invoicer",
        handler=handle,
        wake_stream="wake/invoicer",
        subscriptions=[SubscriptionSpec("invoices", pattern="invoices/*")],
    )
    async with runner:
        await enough.wait()
    print(f"handled {len(seen)} distinct messages", flush=True)


if __name__ == "__main__":
    anyio.run(main)
