"""Run one pullwake runner the way a small application embeds it (the runner benchmarks).

Usage: ``python bench/runner_app.py URL [--backend trio] [--tag T --lanes 8 --first 0]``.
It imports only what an application that embeds a runner imports (anyio and
``pullwake.runtime``), so its memory and CPU are the runner's, not the benchmark's. It runs
one :class:`~pullwake.runtime.runner.Runner` with default settings on ``--backend`` (asyncio
or trio), on the wake stream ``T/wake`` (``T/wake<first>`` with ``--per-process-wake``) and
the subscriptions ``T-<i>`` over the streams ``T/jobs/<i>`` for ``i`` in
``first .. first + lanes - 1`` (the streams must exist), prints ``ready`` once streaming,
then one line per handler start, the lane number ``i``, until it is terminated. Without
``--tag`` it serves the subscription ``cost`` (stream ``cost/jobs``, wake stream
``cost/wake``) and prints ``h`` per handler start.
"""

from __future__ import annotations

import argparse
import os

import anyio

from pullwake.runtime import Claim, Runner, SubscriptionSpec
from pullwake.runtime.offsets import MemoryOffsetStore


async def main(args: argparse.Namespace) -> None:
    lanes = {}
    if args.tag is None:
        wake = "cost/wake"
        runner_id = "cost"
        specs = [SubscriptionSpec("cost", streams=("cost/jobs",))]
        lanes["cost"] = b"h\n"
    else:
        wake = f"{args.tag}/wake{args.first if args.per_process_wake else ''}"
        runner_id = f"bench-{args.tag.replace('/', '-')}-{args.first}"
        specs = []
        for i in range(args.first, args.first + args.lanes):
            sub_id = f"{args.tag.replace('/', '-')}-{i}"
            specs.append(SubscriptionSpec(sub_id, streams=(f"{args.tag}/jobs/{i}",)))
            lanes[sub_id] = f"{i}\n".encode()

    async def handler(claim: Claim) -> None:
        # One unbuffered write per call (a pipe write, a few µs): the parent reads the lines.
        os.write(1, lanes[claim.subscription_id])

    runner = Runner(
        args.url,
        runner_id=runner_id,
        handler=handler,
        wake_stream=wake,
        subscriptions=specs,
        offset_store=MemoryOffsetStore(),
        grace=2.0,
    )
    async with runner:
        await runner.wait_state("streaming")
        os.write(1, b"ready\n")
        await anyio.sleep_forever()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--tag", help="names of the streams and subscriptions (see above)")
    parser.add_argument("--lanes", type=int, default=1, help="subscriptions to serve")
    parser.add_argument("--first", type=int, default=0, help="number of the first lane")
    parser.add_argument(
        "--per-process-wake",
        action="store_true",
        help="wake stream T/wake<first> (one per runner process) instead of T/wake",
    )
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    anyio.run(main, arguments, backend=arguments.backend)
