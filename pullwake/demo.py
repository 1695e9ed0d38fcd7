"""Show the lifecycle actor riding out a dead server, with simulated activities.

``make demo`` runs this. The "server" here is a flag, not a process: it goes silent (so the
connect hangs), the heartbeat notices two failures in a row and sends ``stream_reset``, which
cancels the hung connect; when the server answers again a heartbeat sends
``server_reachable``, the rest of the backoff is skipped, and the stream reconnects. Then the
demo stops the actor and exits 0. Every transition is printed with the scopes it started and
cancelled.
"""

from __future__ import annotations

import sys

import anyio

from pullwake.machines import LIFECYCLE
from pullwake.runtime.actor import ActivityContext, Actor, TransitionRecord, describe


class SimulatedServer:
    """A server that is up, or silent (accepts connections and never answers)."""

    def __init__(self) -> None:
        self.up = True


async def main() -> int:
    server = SimulatedServer()
    started = anyio.current_time()
    handled: list[int] = []

    def show(record: TransitionRecord) -> None:
        if record.kind in ("transition", "dropped", "failed"):
            print(f"[{anyio.current_time() - started:5.2f}s] {describe(record)}", flush=True)

    async def heartbeat(ctx: ActivityContext) -> str | None:
        failures = 0
        while True:
            await anyio.sleep(0.1)
            if server.up:
                failures = 0
                if actor.state == "reconnecting":
                    ctx.send("server_reachable")
            else:
                failures += 1
                if failures >= 2 and actor.state != "reconnecting":
                    print(f"           heartbeat failed {failures} times: stream_reset", flush=True)
                    ctx.send("stream_reset")

    async def connect(ctx: ActivityContext) -> str | None:
        if not server.up:
            print("           connect hangs (server silent)", flush=True)
            await anyio.sleep_forever()
        await anyio.sleep(0.02)
        return None

    async def read_stream(ctx: ActivityContext) -> str | None:
        while server.up:
            await anyio.sleep(0.1)
            handled.append(len(handled) + 1)
        return None  # the stream ended: "stream_ended"

    async def backoff(ctx: ActivityContext) -> str | None:
        await ctx.clock.sleep(1.0)  # long on purpose: server_reachable cuts it short
        return None

    async def drain(ctx: ActivityContext) -> str | None:
        await anyio.sleep(0.05)
        return None

    activities = {
        "heartbeat": heartbeat,
        "connect": connect,
        "read_stream": read_stream,
        "backoff": backoff,
        "drain": drain,
    }
    async with Actor(LIFECYCLE, activities, inspect=show) as actor:
        actor.send_nowait("start")
        await actor.wait_state("streaming")
        await anyio.sleep(0.3)
        print("           -- the server goes silent --", flush=True)
        server.up = False
        await actor.wait_state("reconnecting")
        await actor.wait_state("connecting")  # the backoff elapsed; this connect will hang
        await actor.wait_state("reconnecting")  # the hung connect was reset by heartbeats
        print("           -- the server answers again --", flush=True)
        server.up = True
        await actor.wait_state("streaming")
        await anyio.sleep(0.2)
        actor.send_nowait("stop")
        await actor.wait_state("stopped")
        stats = actor.statistics()
    print(
        f"done: {stats.transitions} transitions, {stats.activities_started} activities started, "
        f"{stats.activities_cancelled} cancelled, {stats.leaked} leaked, "
        f"{len(handled)} simulated reads"
    )
    return 0 if stats.leaked == 0 else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))
