"""A worker as a plain anyio program: one runner, one subscription, Ctrl-C to stop.

    pullwake server &                             # 127.0.0.1:4437, SQLite under .pullwake/
    python examples/anyio_worker.py               # runs on asyncio; PULLWAKE_BACKEND=trio for trio
    pullwake stream create orders/eu
    pullwake stream append orders/eu '{"order": 1}'

The runner creates the ``orders`` subscription (every stream under ``orders/``) and its wake
stream when it connects. Settings come from the environment: ``PULLWAKE_URL`` (default
``http://127.0.0.1:4437``), ``PULLWAKE_RUNNER_ID`` (default ``anyio-worker``), and
``EXAMPLE_MESSAGES``: stop by itself after that many messages (the tests use it).
"""

from __future__ import annotations

import os

import anyio

from pullwake.runtime import Claim, Runner, SubscriptionSpec

URL = os.environ.get("PULLWAKE_URL", "http://127.0.0.1:4437")
RUNNER_ID = os.environ.get("PULLWAKE_RUNNER_ID", "anyio-worker")
#: Stop after this many messages; 0 = run until Ctrl-C.
LIMIT = int(os.environ.get("EXAMPLE_MESSAGES", "0"))


async def main() -> None:
    handled = 0
    enough = anyio.Event()

    async def handle(claim: Claim) -> None:
        nonlocal handled
        for stream in claim.pending_streams:
            async for batch in claim.batches(stream.path):
                for message in batch.messages:
                    print(f"{stream.path}: {message}", flush=True)
                    handled += 1
                # Commit progress per read: a crash after this line does not redo the batch.
                await claim.ack(stream.path, batch.offset)
        if LIMIT and handled >= LIMIT:
            enough.set()

    runner = Runner(
        URL,
        runner_id=RUNNER_ID,
        handler=handle,
        wake_stream=f"wake/{RUNNER_ID}",
        subscriptions=[SubscriptionSpec("orders", pattern="orders/*")],
    )
    async with runner:  # started; leaving the block stops it cleanly
        await enough.wait()
    print(f"handled {handled} messages", flush=True)


if __name__ == "__main__":
    anyio.run(main, backend=os.environ.get("PULLWAKE_BACKEND", "asyncio"))
