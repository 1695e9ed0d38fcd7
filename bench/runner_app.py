"""Run one pullwake runner the way a small application embeds it (``bench/runner_cost.py``).

Usage: ``python bench/runner_app.py URL``. It imports only what an application that embeds a
runner imports (anyio and ``pullwake.runtime``), so its memory is the runner's, not the
benchmark's. It runs one :class:`~pullwake.runtime.runner.Runner` with default settings on
the subscription ``cost`` (stream ``cost/jobs``, wake stream ``cost/wake``), prints ``ready``
once streaming, then one line per handler start, until it is terminated.
"""

from __future__ import annotations

import sys

import anyio

from pullwake.runtime import Claim, Runner, SubscriptionSpec
from pullwake.runtime.offsets import MemoryOffsetStore


async def main(url: str) -> None:
    out = sys.stdout

    async def handler(claim: Claim) -> None:
        out.write("h\n")
        out.flush()

    runner = Runner(
        url,
        runner_id="cost",
        handler=handler,
        wake_stream="cost/wake",
        subscriptions=[SubscriptionSpec("cost", streams=("cost/jobs",))],
        offset_store=MemoryOffsetStore(),
    )
    async with runner:
        await runner.wait_state("streaming")
        out.write("ready\n")
        out.flush()
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
