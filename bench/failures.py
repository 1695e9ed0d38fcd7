"""Measure failure detection and recovery: server SIGKILL, silent server, hung connect.

Run alone: ``.venv/bin/python bench/failures.py [--runs 5]``.
Three faults, each on its own ``pullwake server`` (SQLite), each against two groups of
runners, all groups at once (the figures are timer-bound, so running them side by side costs
accuracy only in milliseconds and saves minutes):

- **default**: ``RunnerSettings()`` as shipped (5 s heartbeats, 9 s read timeout against the
  server's 3 s keepalive, two heartbeat failures reset the stream, a probe every 0.5 s while
  the server gives no answer);
- **heartbeat-only** (the runner this project replaces): ``RunnerSettings(heartbeat_interval=30,
  failures_before_reset=2, timeouts=Timeouts(read=3600), reconnect_probe_interval=None)``: a
  heartbeat every 30 s, each bounded by 30 s (the interval, as by default), no silence
  detection on the wake stream (a read timeout of an hour stands for none), so only two failed
  heartbeats in a row reset the stream, and no faster probing while reconnecting.

A group is ``--runs`` runners, each on its own wake stream, started at random moments over one
heartbeat interval so their heartbeat and keepalive phases are independent; each runner is
one run. The faults:

- **SIGKILL**: the server process is killed. Detection: from the kill to the runner leaving
  ``streaming``. The server is started again (same port and database) 2 s after the kill.
- **silent server**: the server is frozen with SIGSTOP (it holds its sockets, answers nothing,
  sends no keepalive). Detection: from the SIGSTOP to the runner leaving ``streaming``.
  SIGCONT 2 s after the last runner of the group noticed.
- **hung connect**: the runners reach the server through a TCP proxy
  (``pullwake/testing/proxy.py``) that starts blackholing and resets the open connections, so
  each runner reconnects into a connection that is accepted and never answered. Detection:
  from entering ``connecting`` to leaving it. The proxy forwards again 2 s after the last
  runner of the group noticed.

**Reconnect** is from the server's return (the restarted server's listening line, SIGCONT, or
the proxy forwarding again) to the runner being back in ``streaming``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import sys
import time
from typing import Any

import anyio
import wire
from figures import Report, arguments, parse
from servers import pullwake_server

from pullwake.runtime import Runner, RunnerSettings
from pullwake.runtime.actor import TransitionRecord
from pullwake.runtime.client import Timeouts
from pullwake.testing import FaultProxy

CONFIGS: dict[str, RunnerSettings] = {
    "default": RunnerSettings(),
    "heartbeat-only": RunnerSettings(
        heartbeat_interval=30.0,
        failures_before_reset=2,
        timeouts=Timeouts(connect=5.0, read=3600.0, request=10.0),
        reconnect_probe_interval=None,
    ),
}
FAULTS = ("sigkill", "silent", "hung")
TITLES = {
    "sigkill": "server SIGKILL",
    "silent": "silent server (SIGSTOP)",
    "hung": "hung connect (blackholing proxy)",
}
RETURN_AFTER = 2.0
DETECT_CAP = 180.0
RECONNECT_CAP = 60.0


Step = tuple[float, str, str, str]


class Timeline:
    """A runner's transitions (the ``inspect`` hook) with the time each was recorded."""

    def __init__(self) -> None:
        # Invariant: (perf_counter, source, event, target) of every transition, in order.
        self.steps: list[Step] = []
        # Invariant: set (and replaced) each time a step is added.
        self.changed = anyio.Event()

    def __call__(self, record: TransitionRecord) -> None:
        if record.kind == "transition":
            self.steps.append(
                (time.perf_counter(), record.source[-1], record.event or "", record.target[-1])
            )
            self.changed.set()
            self.changed = anyio.Event()

    def first(
        self, after: float, *, source: str | None = None, target: str | None = None
    ) -> Step | None:
        """Return the first step at or after ``after`` from ``source`` or into ``target``."""
        for step in self.steps:
            if step[0] < after:
                continue
            if source is not None and step[1] != source:
                continue
            if target is not None and step[3] != target:
                continue
            return step
        return None

    async def wait(self, after: float, cap: float, **kw: str) -> Step | None:
        """Wait up to ``cap`` seconds for :meth:`first` to find a step; None if none came."""
        with anyio.move_on_after(cap):
            while (step := self.first(after, **kw)) is None:
                await self.changed.wait()
            return step
        return None


async def run_group(fault: str, config: str, runs: int, results: dict[str, Any]) -> None:
    """Run one group: a server, ``runs`` runners with ``config``, the fault, the recovery."""
    settings = CONFIGS[config]
    tag = f"{fault}-{config}"
    with contextlib.ExitStack() as stack:
        # Started in a thread: the other groups' runners keep running meanwhile.
        server = await anyio.to_thread.run_sync(stack.enter_context, pullwake_server(name=tag))
        async with await wire.connect(server.url) as http:
            for i in range(runs):
                await http.put_json(f"/v1/stream/fail/{i}")
        proxy: FaultProxy | None = None
        async with FaultProxy("127.0.0.1", server.port) as proxy_cm:
            if fault == "hung":
                proxy = proxy_cm
            url = proxy.url if proxy is not None else server.url
            timelines = [Timeline() for _ in range(runs)]

            async def nothing(claim: object) -> None:
                return None

            runners = [
                Runner(
                    url,
                    runner_id=f"{tag}-{i}",
                    handler=nothing,
                    wake_stream=f"fail/{i}",
                    settings=settings,
                    grace=0.5,
                    inspect=timelines[i],
                )
                for i in range(runs)
            ]
            rng = random.Random(hash(tag) & 0xFFFF)
            offsets = sorted(rng.uniform(0, settings.heartbeat_interval) for _ in range(runs))
            async with anyio.create_task_group() as tg:
                stop = anyio.Event()
                ready = [anyio.Event() for _ in range(runs)]

                async def host(i: int, delay: float) -> None:
                    await anyio.sleep(delay)
                    async with runners[i] as runner:
                        await runner.wait_state("streaming")
                        ready[i].set()
                        await stop.wait()

                t_start = time.perf_counter()
                for i in range(runs):
                    tg.start_soon(host, i, offsets[i])
                for event in ready:
                    with anyio.fail_after(settings.heartbeat_interval + 30):
                        await event.wait()
                # Let every runner reach its steady state (a heartbeat done, stream idle).
                settle = t_start + settings.heartbeat_interval + 1 - time.perf_counter()
                await anyio.sleep(max(0.0, settle))
                detections, reconnects = await inject(fault, server, proxy, timelines)
                stop.set()
    results[tag] = {"detect": detections, "reconnect": reconnects}


async def inject(
    fault: str, server: Any, proxy: FaultProxy | None, timelines: list[Timeline]
) -> tuple[list[float], list[float]]:
    """Break the server, wait for every runner to notice, restore it; return ms figures."""
    t0 = time.perf_counter()
    if fault == "sigkill":
        await anyio.to_thread.run_sync(server.kill)
    elif fault == "silent":
        server.pause()
    else:
        assert proxy is not None
        proxy.blackhole()
        await proxy.reset()

    async def detect(timeline: Timeline) -> float:
        if fault == "hung":
            entered = await timeline.wait(t0, DETECT_CAP, target="connecting")
            if entered is None:
                return math.nan
            left = await timeline.wait(entered[0], DETECT_CAP, source="connecting")
            return math.nan if left is None else left[0] - entered[0]
        left = await timeline.wait(t0, DETECT_CAP, source="streaming")
        return math.nan if left is None else left[0] - t0

    detections: list[float] = [math.nan] * len(timelines)

    async def detect_into(i: int) -> None:
        detections[i] = await detect(timelines[i])

    if fault == "sigkill":
        async with anyio.create_task_group() as tg:
            for i in range(len(timelines)):
                tg.start_soon(detect_into, i)
            await anyio.sleep(RETURN_AFTER)
            await anyio.to_thread.run_sync(server.start)
            t_back = time.perf_counter()
    else:
        async with anyio.create_task_group() as tg:
            for i in range(len(timelines)):
                tg.start_soon(detect_into, i)
        await anyio.sleep(RETURN_AFTER)
        t_back = time.perf_counter()
        if fault == "silent":
            server.resume()
        else:
            assert proxy is not None
            proxy.forward()

    async def reconnect(timeline: Timeline) -> float:
        # A runner may be back a moment before the restarted server's line was read.
        back = await timeline.wait(t_back - 0.5, RECONNECT_CAP, target="streaming")
        return math.nan if back is None else max(0.0, back[0] - t_back)

    reconnects: list[float] = [math.nan] * len(timelines)

    async def reconnect_into(i: int) -> None:
        reconnects[i] = await reconnect(timelines[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(timelines)):
            tg.start_soon(reconnect_into, i)
    return [d * 1000 for d in detections], [r * 1000 for r in reconnects]


async def measure(runs: int, configs: list[str]) -> dict[str, Any]:
    """Run every group at once; return their figures by ``fault-config``."""
    results: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        for fault in FAULTS:
            for config in configs:
                tg.start_soon(run_group, fault, config, runs, results)
    return results


def main() -> int:
    parser = arguments(__doc__.splitlines()[0])
    args = parse(parser)
    # Failing heartbeats are the point here: keep their warnings out of the output.
    logging.getLogger("pullwake").setLevel(logging.ERROR)
    report = Report("failures.py", args)
    t0 = time.perf_counter()
    # The heartbeat-only groups take two minutes (their detection is the point): a quick run
    # measures the default settings only.
    configs = ["default"] if args.quick else list(CONFIGS)
    results = anyio.run(measure, args.runs, configs)
    for fault in FAULTS:
        for config in configs:
            figures = results[f"{fault}-{config}"]
            report.add(
                f"failures.{fault}.{config}.detect",
                f"{TITLES[fault]}, {config}: detection",
                "ms",
                figures["detect"],
                digits=0,
            )
            report.add(
                f"failures.{fault}.{config}.reconnect",
                f"{TITLES[fault]}, {config}: reconnect after return",
                "ms",
                figures["reconnect"],
                digits=0,
            )
    report.note(
        f"all {len(FAULTS) * len(configs)} groups ran at once in {time.perf_counter() - t0:.0f} s;"
        f" a server returns {RETURN_AFTER} s after the kill (SIGKILL) or after the last runner "
        "of its group noticed (silent, hung)"
    )
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
