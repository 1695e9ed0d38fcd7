"""Show the whole loop: a server on SQLite, a runner, a producer, and a server crash.

``make demo`` runs this. It starts ``pullwake server`` as a child process on a throwaway SQLite
database, embeds a :class:`~pullwake.runtime.Runner` with a handler that prints what it handles,
and appends orders to three streams. Half-way it SIGKILLs the server: the runner notices at
once, backs off, and reconnects when the server is back on the same port; the producer goes on,
and nothing is lost or handled twice. It prints the runner's health as the server sees it, the
lifecycle diagram with the active state, then stops the runner (its final heartbeat makes the
server show it ``offline``) and the server, and exits 0. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from pullwake.machines.diagram import mermaid
from pullwake.machines.lifecycle import LIFECYCLE
from pullwake.runtime import Claim, Runner, RunnerSettings, SubscriptionSpec
from pullwake.runtime.actor import TransitionRecord, describe
from pullwake.testing import AdminClient, ServerProcess

STREAMS = ("orders/berlin", "orders/lisbon", "orders/oslo")
PER_ROUND = 4
WAKE_STREAM = "wake/demo"
RUNNER_ID = "demo-worker"


async def main() -> int:
    with tempfile.TemporaryDirectory(prefix="pullwake-demo-") as tmp:
        database = f"sqlite:///{Path(tmp) / 'demo.db'}"
        server = ServerProcess(database, log_dir=Path(tmp), args=["--keepalive", "1"])
        await anyio.to_thread.run_sync(server.start)
        print(f"server  listening on {server.url} (SQLite in a temporary directory)")
        try:
            return await run_demo(server)
        finally:
            await anyio.to_thread.run_sync(server.close)


async def run_demo(server: ServerProcess) -> int:
    handled: list[tuple[str, Any]] = []
    per_round = PER_ROUND * len(STREAMS)
    expected = 2 * per_round
    # One event per round, set once the handler has seen that many orders.
    rounds = {per_round: anyio.Event(), expected: anyio.Event()}

    async def handle(claim: Claim) -> None:
        for stream in claim.pending_streams:
            async for order in claim.messages(stream.path):
                handled.append((stream.path, order))
                print(f"handler {stream.path:<14} {json.dumps(order)}")
        for count, reached in rounds.items():
            if len(handled) >= count:
                reached.set()

    def show(record: TransitionRecord) -> None:
        if record.kind == "transition":
            print(f"runner  {describe(record)}")

    async with AdminClient(server.url) as admin:
        http = admin.http
        for path in (*STREAMS, WAKE_STREAM):
            await admin.create_stream(path)

        runner = Runner(
            server.url,
            runner_id=RUNNER_ID,
            handler=handle,
            wake_stream=WAKE_STREAM,
            subscriptions=[SubscriptionSpec("orders", pattern="orders/*")],
            settings=RunnerSettings(heartbeat_interval=0.5),
            inspect=show,
        )
        async with runner:
            await runner.wait_state("streaming")
            await produce(admin, round_no=1)
            with anyio.fail_after(30):
                await rounds[per_round].wait()

            print("demo    -- SIGKILL the server --")
            await anyio.to_thread.run_sync(server.kill)
            await runner.wait_state("server_gone")
            await anyio.sleep(1.0)
            print("demo    -- start the server again (same port, same database) --")
            await anyio.to_thread.run_sync(server.start)
            await produce(admin, round_no=2)
            with anyio.fail_after(60):
                await rounds[expected].wait()
            await runner.wait_state("streaming")

            health = (await http.get(f"/v1/runners/{RUNNER_ID}/health")).json()
            print(f"health  as the server sees it: {summarize(health)}")
            print(f"diagram the lifecycle now (active: {runner.state}):")
            print(mermaid(LIFECYCLE, active=runner.state))
        after_stop = (await http.get(f"/v1/runners/{RUNNER_ID}/health")).json()
        print(f"health  after stop: {summarize(after_stop)}")

    orders = [order for _, order in handled]
    unique = {json.dumps(o, sort_keys=True) for o in orders}
    lost = expected - len(unique)
    duplicated = len(orders) - len(unique)
    code = await anyio.to_thread.run_sync(server.terminate)
    print(
        f"done    {len(unique)}/{expected} orders handled, {lost} lost, {duplicated} handled "
        f"twice; runner reconnected {runner.statistics().reconnects} time(s); server exit {code}"
    )
    return 0 if lost == 0 and duplicated == 0 and code == 0 else 1


async def produce(admin: AdminClient, round_no: int) -> None:
    for i in range(PER_ROUND):
        for path in STREAMS:
            await admin.append(path, {"city": path.split("/")[1], "round": round_no, "n": i})
    print(f"produce appended {PER_ROUND * len(STREAMS)} orders (round {round_no})")


def summarize(health: dict[str, Any]) -> str:
    keys = ("liveness", "status", "verdict", "reasons")
    picked = {k: health[k] for k in keys if k in health}
    return json.dumps(picked or health)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(anyio.run(main))
