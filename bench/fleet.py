"""Run runner processes and closed-loop producers against a server (the throughput benchmarks).

A **lane** is one subscription over a stream of its own. :func:`fleet` creates the streams
under a tag, starts ``procs`` child processes of ``bench/runner_app.py`` (each one
:class:`~pullwake.runtime.runner.Runner` with default settings on the chosen backend, serving
its share of the lanes on a wake stream of its own, printing the lane number at every handler
start) and, in this process, one closed-loop producer per lane: append one message with the
raw client of :mod:`wire`, wait until a runner's handler has started for it, append the next.
The runners' CPU is therefore theirs alone (the producers live here); :class:`Fleet` counts
handler starts (cycles) and gives the children's process ids for CPU readings and profiles.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import wire

__all__ = ["Fleet", "create_streams", "fleet"]

APP = Path(__file__).with_name("runner_app.py")
START_WAIT = 120.0


async def create_streams(url: str, paths: list[str], parallel: int = 8) -> None:
    """Create the streams ``paths`` (``parallel`` connections at once)."""

    async def creator(mine: list[str]) -> None:
        async with await wire.connect(url) as http:
            for path in mine:
                answer = await http.put_json(f"/v1/stream/{path}")
                if answer.status not in (200, 201):
                    raise RuntimeError(f"PUT {path}: {answer}")

    async with anyio.create_task_group() as tg:
        for k in range(parallel):
            tg.start_soon(creator, paths[k::parallel])


class Fleet:
    """The started runner processes and the producers' shared state."""

    def __init__(self, url: str, tag: str, lanes: int, procs: list[anyio.abc.Process]) -> None:
        self.url = url
        self.tag = tag
        self.lanes = lanes
        self.procs = procs
        #: Handler starts seen so far, over all runner processes.
        self.cycles = 0
        # Invariant: events[i] is set when lane i's handler started since it was re-armed.
        self.events = [anyio.Event() for _ in range(lanes)]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def read_lines(self, proc: anyio.abc.Process) -> None:
        """Count the child's handler starts and wake the producers of their lanes."""
        assert proc.stdout is not None
        rest = b""
        async for chunk in proc.stdout:
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                self.cycles += 1
                self.events[int(line)].set()

    async def produce(self, lane: int) -> None:
        """Append to one lane in a closed loop, until cancelled."""
        path = f"/v1/stream/{self.tag}/jobs/{lane}"
        async with await wire.connect(self.url) as http:
            i = 0
            while True:
                self.events[lane] = event = anyio.Event()
                answer = await http.post_json(path, {"i": i})
                if answer.status not in (200, 204):
                    raise RuntimeError(f"append failed: {answer}")
                # No bound here: a lane the runner is slow to serve (more subscriptions than
                # its concurrency) shows as fewer cycles in the window, not as a failure; the
                # windows are timed by the caller, and leaving the fleet cancels this.
                await event.wait()
                i += 1


async def _wait_ready(proc: anyio.abc.Process) -> None:
    assert proc.stdout is not None
    got = b""
    with anyio.fail_after(START_WAIT):
        while b"ready\n" not in got:
            chunk = await proc.stdout.receive()
            got += chunk
    if got.split(b"ready\n", 1)[1]:
        raise RuntimeError("a runner handled work before the producers started")


@asynccontextmanager
async def fleet(
    url: str, tag: str, lanes: int, procs: int = 1, backend: str = "asyncio"
) -> AsyncIterator[Fleet]:
    """Start ``procs`` runner processes on ``lanes`` lanes and the producers; stop them at exit."""
    if lanes % procs:
        raise ValueError(f"{lanes} lanes do not split evenly over {procs} runner processes")
    per = lanes // procs
    paths = [f"{tag}/wake{p * per}" for p in range(procs)]
    paths += [f"{tag}/jobs/{i}" for i in range(lanes)]
    await create_streams(url, paths)
    async with AsyncExitStack() as stack:
        started = []
        for p in range(procs):
            command = [
                sys.executable,
                str(APP),
                url,
                "--backend",
                backend,
                "--tag",
                tag,
                "--lanes",
                str(per),
                "--first",
                str(p * per),
                "--per-process-wake",
            ]
            proc = await anyio.open_process(command, stderr=None, env=dict(os.environ))
            stack.push_async_callback(_stop, proc)
            started.append(proc)
        with anyio.fail_after(START_WAIT):
            async with anyio.create_task_group() as tg:
                for proc in started:
                    tg.start_soon(_wait_ready, proc)
        work = Fleet(url, tag, lanes, started)
        async with anyio.create_task_group() as tg:
            for proc in started:
                tg.start_soon(work.read_lines, proc)
            for lane in range(lanes):
                tg.start_soon(work.produce, lane)
            yield work
            tg.cancel_scope.cancel()


async def _stop(proc: anyio.abc.Process) -> None:
    with anyio.CancelScope(shield=True):
        if proc.returncode is None:
            proc.terminate()
            with anyio.move_on_after(5):
                await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.aclose()
