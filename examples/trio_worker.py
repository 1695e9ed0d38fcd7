"""A worker under trio, with its own signal handling and an explicit, bounded stop.

    pullwake server &
    python examples/trio_worker.py                # Ctrl-C or SIGTERM stops it
    pullwake stream create jobs/resize
    pullwake stream append jobs/resize '{"image": "cat.png"}'

SIGINT and SIGTERM end the wait; ``runner.stop()`` then gives running handlers ``grace``
seconds, releases what they did not finish and reports the runner offline. Environment:
``PULLWAKE_URL`` (default ``http://127.0.0.1:4437``), ``PULLWAKE_RUNNER_ID`` (default
``trio-worker``), ``EXAMPLE_MESSAGES`` (stop after that many messages; the tests use it).
"""

from __future__ import annotations

import os
import signal

import trio

from pullwake.runtime import Claim, Runner, SubscriptionSpec

URL = os.environ.get("PULLWAKE_URL", "http://127.0.0.1:4437")
RUNNER_ID = os.environ.get("PULLWAKE_RUNNER_ID", "trio-worker")
LIMIT = int(os.environ.get("EXAMPLE_MESSAGES", "0"))


async def main() -> None:
    handled = 0
    enough = trio.Event()

    async def handle(claim: Claim) -> None:
        nonlocal handled
        for stream in claim.pending_streams:
            async for message in claim.messages(stream.path):
                print(f"{stream.path}: {message}", flush=True)
                handled += 1
        # Returning acks everything the claim covered; raising would release it for a retry.
        if LIMIT and handled >= LIMIT:
            enough.set()

    runner = Runner(
        URL,
        runner_id=RUNNER_ID,
        handler=handle,
        wake_stream=f"wake/{RUNNER_ID}",
        subscriptions=[SubscriptionSpec("jobs", pattern="jobs/*")],
        grace=5.0,
    )
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with runner:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for signum in signals:
                        print(f"{signal.Signals(signum).name}: stopping", flush=True)
                        break
                    nursery.cancel_scope.cancel()

                async def stop_when_enough() -> None:
                    await enough.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(stop_on_signal)
                nursery.start_soon(stop_when_enough)
            await runner.stop()
    print(f"handled {handled} messages; health: {runner.health()['status']}", flush=True)


if __name__ == "__main__":
    trio.run(main)
